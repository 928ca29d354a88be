"""Text targets from scene annotations: class names, captions, VQA and OCR.

Everything here is a pure function of a record (from ``litlab.data.scenes``) and a
``numpy.random.Generator``; callers seed the generator per sample, so the text is as
reproducible as the image. Questions are only asked when their answer is unambiguous from the
annotation (a unique referent, a clear spatial gap), so the labels are exact, and the 10 answers
per question mimic VQAv2 (a majority of >= 7 canonical answers plus plausible variants), so the
standard VQA accuracy metric applies unchanged.
"""

from __future__ import annotations

from collections import Counter
from itertools import permutations

import numpy as np

from litlab.data.scenes import COLORS, HELD_OUT_PAIRS, SHAPES, TEXT_SHAPES

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FAMILIES = ("attribute", "count", "existence", "spatial", "comparison")
TEXT_FAMILIES = ("reading", "grounding")
NUM_ANSWERS = 10
# Centers closer than this (fraction of the side) along an axis are "not clearly" left/right or
# above/below: no question or caption relies on such a relation.
SPATIAL_GAP = 0.15

_PLURAL = {s: s + ("es" if s.endswith(("s", "x", "sh", "ch")) else "s") for s in SHAPES}
_VARIANTS = {
    "yes": ("yeah", "yep"), "no": ("nope",),
    "large": ("big",), "small": ("little", "tiny"),
    "red": ("dark red", "bright red"), "orange": ("dark orange", "light orange"),
    "yellow": ("gold", "bright yellow"), "green": ("dark green", "bright green"),
    "cyan": ("light blue", "turquoise", "teal"), "blue": ("dark blue", "royal blue"),
    "purple": ("violet", "dark purple"), "pink": ("light pink", "magenta"),
    "circle": ("round", "dot"), "square": ("box", "rectangle"), "triangle": ("triangular",),
    "star": ("star shape",), "diamond": ("rhombus",), "hexagon": ("hexagonal",),
    "cross": ("plus", "plus sign"), "heart": ("heart shape",),
    **{str(i): (w,) for i, w in enumerate(NUMBER_WORDS)}, "0": ("zero", "none"),
}
# Negatives for existence questions never name a held-out pair, so train-split text never
# mentions a combination that train images never show.
_SEEN_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)


def class_name(obj: dict) -> str:
    """Classification label: "<size> <color> <shape>", e.g. "large red triangle"."""
    return f"{obj['size']} {obj['color']} {obj['shape']}"


def ocr_target(record: dict) -> str:
    """The word a ``words`` image shows."""
    return record["word"]


# --------------------------------------------------------------------------------------------
# Phrases


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _np(obj: dict, size: bool = True) -> str:
    """Indefinite noun phrase, with the object's word when it carries one."""
    words = [obj["size"]] if size else []
    phrase = _a(" ".join([*words, obj["color"], obj["shape"]]))
    return f"{phrase} with the word '{obj['word']}'" if obj.get("word") else phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _count(n: int, noun: str, plural: str) -> str:
    return f"{NUMBER_WORDS[n]} {noun if n == 1 else plural}"


def _where(obj: dict) -> str:
    """Coarse position in the image, e.g. "in the top left", "on the right"."""
    x, y = obj["center"]
    col = "left" if x < 0.38 else "right" if x > 0.62 else None
    row = "top" if y < 0.38 else "bottom" if y > 0.62 else None
    if col and row:
        return f"in the {row} {col}"
    if col:
        return f"on the {col}"
    return f"at the {row}" if row else "in the center"


def _relation(a: dict, b: dict) -> str | None:
    """Dominant clear spatial relation of a to b ("to the left of", "above", ...), if any."""
    dx = a["center"][0] - b["center"][0]
    dy = a["center"][1] - b["center"][1]
    if abs(dx) >= abs(dy) and abs(dx) > SPATIAL_GAP:
        return "to the left of" if dx < 0 else "to the right of"
    if abs(dy) > SPATIAL_GAP:
        return "above" if dy < 0 else "below"
    return None


def _ref(obj: dict, objects: list[dict], attrs_options: tuple[tuple[str, ...], ...]) -> str | None:
    """First definite description from ``attrs_options`` that picks out ``obj`` alone.

    E.g. ("shape",) -> "the star", ("color",) -> "the green object". Options that omit an
    attribute let a question ask for that attribute without giving it away.
    """
    for attrs in attrs_options:
        if sum(all(o[k] == obj[k] for k in attrs) for o in objects) == 1:
            words = [obj[k] for k in ("size", "color") if k in attrs]
            return "the " + " ".join([*words, obj["shape"] if "shape" in attrs else "object"])
    return None


_ANY_REF = (("shape",), ("color", "shape"), ("color",), ("size", "shape"), ("size", "color", "shape"))
_NO_COLOR = (("shape",), ("size", "shape"))
_NO_SHAPE = (("color",), ("size", "color"))
_NO_SIZE = (("shape",), ("color",), ("color", "shape"))


# --------------------------------------------------------------------------------------------
# Captions


def captions(record: dict, rng: np.random.Generator) -> list[str]:
    """>= 5 distinct reference captions (objects, attributes, counts, spatial relations)."""
    objects = list(record["objects"])
    n = len(objects)
    order = [objects[i] for i in rng.permutation(n)]
    full = [_np(o) for o in order]
    short = [_np(o, size=False) for o in order]
    out = []
    if n == 1:
        (o,) = objects
        out += [full[0], f"one {o['color']} {o['shape']}", f"{full[0]} {_where(o)}",
                f"a single {o['color']} {o['shape']} on a textured background",
                f"there is {full[0]} {_where(o)} of the image", f"the image shows {short[0]}",
                f"{_a(o['shape'])} colored {o['color']}"]
    else:
        shapes = Counter(o["shape"] for o in order)
        groups = _join([_count(c, s, _PLURAL[s]) if c > 1 else _a(s) for s, c in shapes.items()])
        out += [_join(full), f"{_count(n, 'object', 'objects')}: {_join(full)}",
                f"there are {_count(n, 'shape', 'shapes')}: {_join(short)}", f"the image shows {_join(short)}",
                f"{groups} on a textured background",
                f"{NUMBER_WORDS[n]} colored shapes: {_join(short[::-1])}"]
        # Exact twins (same size, color and shape) cannot be told apart in words: leave them out.
        named = [o for o in order if sum(class_name(p) == class_name(o) for p in order) == 1]
        pairs = [(a, b) for a, b in permutations(named, 2) if _relation(a, b)]
        for k in rng.permutation(len(pairs))[:2]:
            a, b = pairs[k]
            rest = [_np(o) for o in order if o is not a and o is not b]
            twin = sum((o["color"], o["shape"]) == (b["color"], b["shape"]) for o in objects) > 1
            spatial = f"{_np(a)} {_relation(a, b)} {_np(b, size=twin)}"
            out.append(f"{spatial}, with {_join(rest)}" if rest else spatial)
    return list(dict.fromkeys(out))  # distinct, order kept


# --------------------------------------------------------------------------------------------
# VQA


def _variants(canonical: str) -> tuple[str, ...]:
    if canonical in _VARIANTS:
        return _VARIANTS[canonical]
    color, _, shape = canonical.partition(" ")
    if color in COLORS and shape in SHAPES:  # "blue star": people also say "star", "a blue star"
        return (shape, _a(canonical))
    return ()


def _answers(canonical: str, rng: np.random.Generator, variants: bool = True) -> list[str]:
    """10 VQAv2-style answers: >= 7 canonical, the rest plausible variants, shuffled."""
    alts = _variants(canonical) if variants else ()
    k = int(rng.choice([0, 0, 1, 1, 2, 3])) if alts else 0
    answers = [canonical] * (NUM_ANSWERS - k) + [alts[int(i)] for i in rng.integers(len(alts), size=k)]
    return [answers[i] for i in rng.permutation(NUM_ANSWERS)]


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _qa(question: str, canonical: str, family: str, rng: np.random.Generator, variants: bool = True) -> dict:
    return {"question": question, "answers": _answers(canonical, rng, variants), "family": family}


def _attribute(objects, rng):
    out = []
    for o in objects:
        if ref := _ref(o, objects, _NO_COLOR):
            out.append((f"what color is {ref}?", o["color"]))
        if ref := _ref(o, objects, _NO_SHAPE):
            out.append((f"what shape is {ref}?", o["shape"]))
        if ref := _ref(o, objects, _NO_SIZE):
            out.append((f"what size is {ref}?", o["size"]))
    return out


def _counting(objects, rng):
    shapes = Counter(o["shape"] for o in objects)
    colors = Counter(o["color"] for o in objects)
    # Half the shape/color count questions are about something present, half about anything.
    shape = objects[rng.integers(len(objects))]["shape"] if rng.random() < 0.5 else SHAPES[rng.integers(len(SHAPES))]
    color = objects[rng.integers(len(objects))]["color"] if rng.random() < 0.5 else list(COLORS)[rng.integers(len(COLORS))]
    size = ("small", "large")[rng.integers(2)]
    return [(f"how many {_PLURAL[shape]} are there?", str(shapes[shape])),
            (f"how many {color} objects are there?", str(colors[color])),
            ("how many objects are there?", str(len(objects))),
            (f"how many {size} shapes are in the image?", str(sum(o["size"] == size for o in objects)))]


def _existence(objects, rng):
    present = {(o["color"], o["shape"]) for o in objects}
    shapes = {o["shape"] for o in objects}
    out = []
    if rng.random() < 0.5:
        color, shape = sorted(present)[rng.integers(len(present))]
    else:
        absent = [p for p in _SEEN_PAIRS if p not in present]
        color, shape = absent[rng.integers(len(absent))]
    out.append((f"is there {_a(color + ' ' + shape)}?", _yes_no((color, shape) in present)))
    pool = sorted(shapes) if rng.random() < 0.5 else [s for s in SHAPES if s not in shapes]
    shape = pool[rng.integers(len(pool))]
    out.append((f"are there any {_PLURAL[shape]}?", _yes_no(shape in shapes)))
    return out


_DIRECTIONS = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}


def _clearly(a: dict, b: dict, direction: str) -> bool | None:
    """Whether a is clearly `direction` of b; None when too close to call."""
    axis, sign = _DIRECTIONS[direction]
    d = (a["center"][axis] - b["center"][axis]) * sign
    return True if d > SPATIAL_GAP else False if d < -SPATIAL_GAP else None


def _spatial(objects, rng):
    out = []
    for b in objects:
        ref_b = _ref(b, objects, _ANY_REF)
        if ref_b is None:
            continue
        for direction in _DIRECTIONS:
            verdicts = [(o, _clearly(o, b, direction)) for o in objects if o is not b]
            hits = [o for o, v in verdicts if v]
            if len(hits) == 1 and all(v is not None for _, v in verdicts):  # one clear answer
                a = hits[0]
                out.append((f"what is {direction} {ref_b}?", f"{a['color']} {a['shape']}"))
        for a in objects:
            ref_a = _ref(a, objects, _ANY_REF)
            if a is b or ref_a is None:
                continue
            direction = list(_DIRECTIONS)[rng.integers(len(_DIRECTIONS))]
            verdict = _clearly(a, b, direction)
            if verdict is not None:
                out.append((f"is {ref_a} {direction} {ref_b}?", _yes_no(verdict)))
    return out


def _comparison(objects, rng):
    out = []
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            if (ra := _ref(a, objects, _NO_COLOR)) and (rb := _ref(b, objects, _NO_COLOR)):
                out.append((f"are {ra} and {rb} the same color?", _yes_no(a["color"] == b["color"])))
            if (ra := _ref(a, objects, _NO_SHAPE)) and (rb := _ref(b, objects, _NO_SHAPE)):
                out.append((f"are {ra} and {rb} the same shape?", _yes_no(a["shape"] == b["shape"])))
            if not ((ra := _ref(a, objects, _NO_SIZE)) and (rb := _ref(b, objects, _NO_SIZE))):
                continue
            out.append((f"are {ra} and {rb} the same size?", _yes_no(a["size"] == b["size"])))
            if a["size"] != b["size"]:
                (x, rx), (_, ry) = [(a, ra), (b, rb)][:: 1 if rng.random() < 0.5 else -1]
                word = "bigger" if rng.random() < 0.5 else "smaller"
                out.append((f"is {rx} {word} than {ry}?", _yes_no((x["size"] == "large") == (word == "bigger"))))
    shapes = Counter(o["shape"] for o in objects)
    if len(shapes) >= 2:
        names = sorted(shapes)
        s1, s2 = (names[i] for i in rng.permutation(len(names))[:2])
        if shapes[s1] != shapes[s2]:
            out.append((f"are there more {_PLURAL[s1]} than {_PLURAL[s2]}?", _yes_no(shapes[s1] > shapes[s2])))
    return out


_GENERATORS = {"attribute": _attribute, "count": _counting, "existence": _existence,
               "spatial": _spatial, "comparison": _comparison}


def _pick(candidates: dict[str, list], rng: np.random.Generator, low: int, high: int) -> list[tuple[str, str, str]]:
    """low..high questions, spread over families round-robin in random order, no repeats.

    Within a family the answer is drawn first (uniformly over the answers on offer), then a
    question with that answer: this balances yes/no and flattens count answers where the image
    allows, so a model cannot score by always answering "no" or "1".
    """
    pools = {f: list(cands) for f, cands in candidates.items() if cands}
    want = int(rng.integers(low, high + 1))
    chosen: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    while len(chosen) < want and pools:
        order = sorted(pools)
        for family in [order[i] for i in rng.permutation(len(order))]:
            pool = pools[family]
            answers = sorted({a for _, a in pool})
            answer = answers[rng.integers(len(answers))]
            matching = [i for i, (_, a) in enumerate(pool) if a == answer]
            question, _ = pool.pop(matching[rng.integers(len(matching))])
            if question not in seen:
                seen.add(question)
                chosen.append((question, answer, family))
            if not pool:
                del pools[family]
            if len(chosen) == want:
                break
    return chosen


def vqa(record: dict, rng: np.random.Generator) -> list[dict]:
    """3-6 questions about a scenes image, over the families in ``FAMILIES``."""
    objects = list(record["objects"])
    candidates = {f: _GENERATORS[f](objects, rng) for f in FAMILIES}
    return [_qa(q, a, f, rng) for q, a, f in _pick(candidates, rng, 3, 6)]


# --------------------------------------------------------------------------------------------
# Text VQA


def _extreme_ref(obj: dict, objects: list[dict]) -> str | None:
    """"the object on the left" etc., when obj is clearly the most extreme one that way."""
    for direction, name in (("to the left of", "the object on the left"), ("to the right of", "the object on the right"),
                            ("above", "the top object"), ("below", "the bottom object")):
        if len(objects) > 1 and all(_clearly(obj, o, direction) for o in objects if o is not obj):
            return name
    return None


def text_vqa(record: dict, rng: np.random.Generator) -> list[dict]:
    """2-4 questions about a text_scenes image: read a located word, or locate a read word."""
    objects = list(record["objects"])
    reading, grounding = [], []
    for o in objects:
        refs = [r for r in (_ref(o, objects, _ANY_REF), _extreme_ref(o, objects)) if r]
        if refs:  # twin objects (same color and shape) with no clear position stay unasked
            template = ("what word is on {}?", "what does {} say?", "what is written on {}?")[rng.integers(3)]
            reading.append((template.format(refs[rng.integers(len(refs))]), o["word"]))
        w = o["word"]
        grounding.append((f"which color is the object with the word '{w}'?", o["color"]))
        grounding.append((f"what shape has the word '{w}' on it?", o["shape"]))
        others = [s for s in TEXT_SHAPES if s != o["shape"]]  # shapes a word could be on
        shape = others[rng.integers(len(others))] if rng.random() < 0.5 else o["shape"]
        grounding.append((f"is the word '{w}' written on {_a(shape)}?", _yes_no(shape == o["shape"])))
    picked = _pick({"reading": reading, "grounding": grounding}, rng, 2, 4)
    # Reading answers are a transcription: no human would vary it, so all ten agree.
    return [_qa(q, a, f, rng, variants=f != "reading") for q, a, f in picked]
