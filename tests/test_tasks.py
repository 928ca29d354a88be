import numpy as np
import pytest

from litlab.data import mixtures, scenes, tasks

LIMIT = 24


@pytest.mark.parametrize("name", mixtures.EMBEDDED_TASKS)
def test_every_task_example_format(name):
    ts = tasks.load_task(name, "train", limit=LIMIT)
    assert ts.images.dtype == np.uint8 and ts.images.shape[1:] == (64, 64, 3)
    assert len(ts.image_keys) == len(ts.images) and ts.image_index.max() < len(ts.images)
    assert len(ts) == len(ts.references) >= LIMIT
    for turns, refs in zip(ts.turns, ts.references):
        assert len(turns) == 1
        prompt, target = turns[0]
        assert isinstance(prompt, str) and target and target == target.strip()
        assert refs and all(isinstance(r, str) for r in refs)
    task = tasks.get_task(name)
    if task.family == "vqa":
        assert all(len(r) == 10 for r in ts.references)
        assert all(t[0][1] in r for t, r in zip(ts.turns, ts.references))
    if task.family == "captioning":
        assert all(len(r) >= 5 for r in ts.references)


def test_deterministic_and_cached_identically(tmp_path, monkeypatch):
    a = tasks.load_task("scenes_vqa", "val", limit=10)
    monkeypatch.setenv("LITLAB_CACHE", str(tmp_path))  # a cold cache re-renders
    b = tasks.load_task("scenes_vqa", "val", limit=10)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.turns == b.turns and a.references == b.references
    c = tasks.load_task("scenes_vqa", "val", limit=10, seed=1)
    assert not np.array_equal(a.images, c.images)


def test_eval_split_has_one_example_per_image_and_prompt():
    train = tasks.load_task("scenes_caption", "train", limit=8)
    test = tasks.load_task("scenes_caption", "test", limit=8)
    assert len(train) >= 5 * 8 and len(test) == 8
    assert all(len(r) >= 5 for r in test.references)


def test_no_image_shared_between_train_and_test():
    for name in mixtures.EMBEDDED_TASKS:
        tr = tasks.load_task(name, "train", limit=200)
        te = tasks.load_task(name, "test", limit=200)
        train_pix = {im.tobytes() for im in tr.images}
        assert not any(im.tobytes() in train_pix for im in te.images), name


def test_compositional_split_holds_out_pairs_and_words():
    held = set(scenes.HELD_OUT_PAIRS)
    train = tasks.load_task("objects_cls", "train", limit=300)
    comp = tasks.load_task("objects_cls", "compositional", limit=50)
    pair = lambda name: tuple(name.split()[1:3])  # "<size> <color> <shape>"
    assert not any(pair(t[0][1]) in held for t in train.turns)
    assert all(pair(t[0][1]) in held for t in comp.turns)
    ocr_train = {t[0][1] for t in tasks.load_task("words_ocr", "train", limit=300).turns}
    ocr_comp = {t[0][1] for t in tasks.load_task("words_ocr", "compositional", limit=100).turns}
    assert not ocr_train & ocr_comp and ocr_comp <= set(scenes.held_out_words())


@pytest.mark.parametrize("style,shared,expect", [
    ("none", False, "what color is it?"),
    ("token", False, "vqa what color is it?"),
    ("token", True, "task what color is it?"),
    ("natural", False, "Answer the question: what color is it?"),
    ("natural", True, "Respond to the image. what color is it?"),
])
def test_prompt_specificity(style, shared, expect):
    assert tasks.get_task("scenes_vqa").prompt("what color is it?", tasks.Prompting(style, shared)) == expect


def test_prompt_without_question():
    t = tasks.get_task("scenes_caption")
    assert t.prompt(None, tasks.Prompting("none")) == ""
    assert t.prompt(None, tasks.Prompting("token")) == "caption"
    assert t.prompt(None, tasks.Prompting("natural")) == "Describe the image."


def test_packed_joins_all_questions_of_an_image():
    flat = tasks.load_task("scenes_vqa", "train", limit=6)
    packed = tasks.load_task("scenes_vqa", "train", limit=6, packed=True)
    assert len(packed) == 6 and sum(len(t) for t in packed.turns) == len(flat)
    with pytest.raises(ValueError, match="no questions to pack"):
        tasks.load_task("words_ocr", "train", limit=2, packed=True)


def test_unknown_names_are_clear():
    with pytest.raises(KeyError, match="unknown task 'nope'; registered tasks"):
        tasks.get_task("nope")
    with pytest.raises(ValueError, match="unknown prompt style"):
        tasks.Prompting("shouting")
    with pytest.raises(ValueError, match="no split 'dev'"):
        tasks.load_task("words_ocr", "dev", limit=2)
