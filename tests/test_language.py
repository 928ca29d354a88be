"""Text targets: captions and VQA answers must agree with the annotations they come from.

The checks below re-derive answers from the objects with their own small parser, independent
of the generator's code path.
"""

import re
from collections import Counter

import numpy as np
import pytest

from litlab.data import language as L
from litlab.data.scenes import COLORS, HELD_OUT_PAIRS, SHAPES, SOURCES

N = 60
PLURAL = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}


@pytest.fixture(scope="module")
def scenes_train():
    return [SOURCES["scenes"].get("train", i) for i in range(N)]


@pytest.fixture(scope="module")
def text_train():
    return [SOURCES["text_scenes"].get("train", i) for i in range(N)]


def _majority(answers):
    (answer, count), = Counter(answers).most_common(1)
    return answer, count


def _referent(phrase, objects):
    """The single object a definite description like "the small red object" denotes."""
    words = phrase.removeprefix("the ").split()
    want = {}
    for w in words:
        if w in ("small", "large"):
            want["size"] = w
        elif w in COLORS:
            want["color"] = w
        elif w in SHAPES:
            want["shape"] = w
    matches = [o for o in objects if all(o[k] == v for k, v in want.items())]
    assert len(matches) == 1, f"{phrase!r} is ambiguous or empty"
    return matches[0]


def test_class_name_and_ocr_target():
    assert L.class_name({"size": "large", "color": "red", "shape": "triangle"}) == "large red triangle"
    rec = SOURCES["words"].get("train", 0)
    assert L.ocr_target(rec) == rec["word"]


@pytest.mark.parametrize("source", ["objects", "scenes", "text_scenes"])
def test_captions_are_many_distinct_and_deterministic(source):
    for i in range(20):
        rec = SOURCES[source].get("train", i)
        caps = L.captions(rec, np.random.default_rng(i))
        assert len(caps) >= 5 and len(set(caps)) == len(caps)
        assert caps == L.captions(rec, np.random.default_rng(i))
        for obj in rec["objects"]:  # every object is named with its attributes somewhere
            assert any(f"{obj['color']} {obj['shape']}" in c for c in caps)
        n = len(rec["objects"])
        if n > 1:
            assert any(L.NUMBER_WORDS[n] in c for c in caps)


def test_spatial_captions_are_true(scenes_train):
    pattern = re.compile(r"an? (\w+ \w+ \w+) (to the left of|to the right of|above|below) an? ((?:small |large )?\w+ \w+)")
    found = 0
    for i, rec in enumerate(scenes_train):
        for cap in L.captions(rec, np.random.default_rng(i)):
            if m := pattern.match(cap):
                a, rel, b = _referent("the " + m[1], rec["objects"]), m[2], _referent("the " + m[3], rec["objects"])
                axis, sign = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1),
                              "below": (1, 1)}[rel]
                assert (a["center"][axis] - b["center"][axis]) * sign > 0
                found += 1
    assert found > 20


def test_vqa_answers_have_vqav2_form(scenes_train):
    families = Counter()
    for i, rec in enumerate(scenes_train):
        qs = L.vqa(rec, np.random.default_rng(i))
        assert 3 <= len(qs) <= 6 and len({q["question"] for q in qs}) == len(qs)
        for q in qs:
            assert len(q["answers"]) == 10 and q["family"] in L.FAMILIES
            _, count = _majority(q["answers"])
            assert count >= 7
            families[q["family"]] += 1
    assert set(families) == set(L.FAMILIES)


def test_vqa_is_deterministic(scenes_train):
    rec = scenes_train[3]
    assert L.vqa(rec, np.random.default_rng(5)) == L.vqa(rec, np.random.default_rng(5))


def _oracle(question, objects):
    """Independent answers for the question forms whose truth is a direct lookup."""
    q = question
    if m := re.fullmatch(r"how many (\w+) are there\?", q):
        if m[1] == "objects":
            return str(len(objects))
        return str(sum(o["shape"] == PLURAL[m[1]] for o in objects))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", q):
        return str(sum(o["color"] == m[1] for o in objects))
    if m := re.fullmatch(r"how many (small|large) shapes are in the image\?", q):
        return str(sum(o["size"] == m[1] for o in objects))
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
        return "yes" if any((o["color"], o["shape"]) == (m[1], m[2]) for o in objects) else "no"
    if m := re.fullmatch(r"are there any (\w+)\?", q):
        return "yes" if any(o["shape"] == PLURAL[m[1]] for o in objects) else "no"
    if m := re.fullmatch(r"what (color|shape|size) is (the [\w ]+)\?", q):
        return _referent(m[2], objects)[m[1]]
    if m := re.fullmatch(r"are (the [\w ]+) and (the [\w ]+) the same (color|shape|size)\?", q):
        a, b = _referent(m[1], objects), _referent(m[2], objects)
        return "yes" if a[m[3]] == b[m[3]] else "no"
    if m := re.fullmatch(r"is (the [\w ]+) (bigger|smaller) than (the [\w ]+)\?", q):
        a, b = _referent(m[1], objects), _referent(m[3], objects)
        assert a["size"] != b["size"]
        return "yes" if (a["size"] == "large") == (m[2] == "bigger") else "no"
    if m := re.fullmatch(r"is (the [\w ]+) (to the left of|to the right of|above|below) (the [\w ]+)\?", q):
        a, b = _referent(m[1], objects), _referent(m[3], objects)
        axis, sign = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}[m[2]]
        d = (a["center"][axis] - b["center"][axis]) * sign
        assert abs(d) > L.SPATIAL_GAP
        return "yes" if d > 0 else "no"
    if m := re.fullmatch(r"what is (to the left of|to the right of|above|below) (the [\w ]+)\?", q):
        b = _referent(m[2], objects)
        axis, sign = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}[m[1]]
        hits = [o for o in objects if o is not b and (o["center"][axis] - b["center"][axis]) * sign > 0]
        assert len(hits) == 1
        return f"{hits[0]['color']} {hits[0]['shape']}"
    if m := re.fullmatch(r"are there more (\w+) than (\w+)\?", q):
        shapes = Counter(o["shape"] for o in objects)
        return "yes" if shapes[PLURAL[m[1]]] > shapes[PLURAL[m[2]]] else "no"
    raise AssertionError(f"no oracle for {q!r}")


def test_vqa_majority_answers_match_annotations():
    checked = Counter()
    for split in ("train", "compositional"):
        for i in range(80):
            rec = SOURCES["scenes"].get(split, i)
            for q in L.vqa(rec, np.random.default_rng(i)):
                answer, _ = _majority(q["answers"])
                assert answer == _oracle(q["question"], rec["objects"]), q
                checked[q["family"]] += 1
    assert min(checked.values()) >= 20


def test_yes_no_answers_are_balanced():
    tally = Counter()
    for i in range(150):
        rec = SOURCES["scenes"].get("val", i)
        for q in L.vqa(rec, np.random.default_rng([1, i])):
            answer, _ = _majority(q["answers"])
            if answer in ("yes", "no"):
                tally[answer] += 1
    assert 0.35 < tally["yes"] / (tally["yes"] + tally["no"]) < 0.65


def test_train_text_never_names_a_held_out_pair(scenes_train):
    held = [f"{c} {s}" for c, s in HELD_OUT_PAIRS]
    for i, rec in enumerate(scenes_train):
        rng = np.random.default_rng(i)
        texts = L.captions(rec, rng) + [q["question"] for q in L.vqa(rec, rng)]
        for text in texts:
            assert not any(re.search(rf"\b{h}", text) for h in held), text


def test_text_vqa_reads_the_right_object(text_train):
    families = Counter()
    for i, rec in enumerate(text_train):
        objects = rec["objects"]
        qs = L.text_vqa(rec, np.random.default_rng(i))
        assert 2 <= len(qs) <= 4
        assert qs == L.text_vqa(rec, np.random.default_rng(i))
        for q in qs:
            assert len(q["answers"]) == 10 and q["family"] in L.TEXT_FAMILIES
            families[q["family"]] += 1
            answer, count = _majority(q["answers"])
            assert count >= 7
            if q["family"] == "reading":
                assert len(set(q["answers"])) == 1
                m = re.fullmatch(r"what (?:word is on|does|is written on) (.+?)(?: say)?\?", q["question"])
                ref = m[1]
                if ref.startswith("the object on the") or ref in ("the top object", "the bottom object"):
                    assert answer in [o["word"] for o in objects]
                else:
                    assert answer == _referent(ref, objects)["word"]
                continue
            word = re.search(r"'(\w+)'", q["question"])[1]
            (obj,) = [o for o in objects if o["word"] == word]
            if q["question"].startswith("which color"):
                assert answer == obj["color"]
            elif q["question"].startswith("what shape"):
                assert answer == obj["shape"]
            else:
                shape = re.search(r"written on an? (\w+)\?", q["question"])[1]
                assert answer == ("yes" if shape == obj["shape"] else "no")
    assert set(families) == set(L.TEXT_FAMILIES)


def test_extreme_references_are_true():
    for i in range(N):
        rec = SOURCES["text_scenes"].get("test", i)
        for q in L.text_vqa(rec, np.random.default_rng(i)):
            side = re.search(r"the object on the (left|right)|the (top|bottom) object", q["question"])
            if q["family"] != "reading" or not side:
                continue
            answer, _ = _majority(q["answers"])
            obj = next(o for o in rec["objects"] if o["word"] == answer)
            axis, pick = {"left": (0, min), "right": (0, max), "top": (1, min), "bottom": (1, max)}[side[1] or side[2]]
            assert obj["center"][axis] == pick(o["center"][axis] for o in rec["objects"])
