"""The embedded benchmark's images: determinism, splits, held-out combinations, geometry."""

import re

import numpy as np
import pytest

from litlab.data import scenes
from litlab.data.scenes import COLORS, HELD_OUT_PAIRS, SHAPES, SIZES, SOURCES, SPLITS

SCAN = 150  # records scanned per (source, split) in the distribution tests


def _records(source, split, n=SCAN, **kw):
    return [SOURCES[source].get(split, i, **kw) for i in range(n)]


@pytest.fixture(scope="module")
def scanned():
    """Records of every (source, split) pair, rendered once for all the tests below."""
    return {(src, split): _records(src, split) for src in SOURCES for split in SPLITS}


def test_vocabulary():
    assert len(SHAPES) >= 6 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLORS) == 8 and SIZES == ("small", "large")
    assert SPLITS == ("train", "val", "test", "compositional")
    rgb = np.array(list(COLORS.values()), float)
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert dists.min() > 60, "named colors must be well separated"
    assert len(HELD_OUT_PAIRS) == 8 and len(set(HELD_OUT_PAIRS)) == 8
    # Every color and every shape still occurs in training, with other partners.
    assert {c for c, _ in HELD_OUT_PAIRS} == set(COLORS)
    assert {s for _, s in HELD_OUT_PAIRS} == set(SHAPES)
    assert set(scenes.TEXT_SHAPES) <= set(SHAPES)


def test_sources_and_split_sizes():
    assert set(SOURCES) == {"objects", "scenes", "words", "text_scenes"}
    for name, src in SOURCES.items():
        assert src.name == name
        assert tuple(src.split_sizes) == SPLITS
        assert all(n >= 1000 for n in src.split_sizes.values())
    assert SOURCES["scenes"].split_sizes["train"] == 20000


@pytest.mark.parametrize("source", list(SOURCES))
def test_deterministic_in_any_order(source):
    src = SOURCES[source]
    first = [src.get("train", i)["image"] for i in (7, 3, 11)]
    again = [src.get("train", i)["image"] for i in (11, 7, 3)]
    for a, b in zip(first, [again[1], again[2], again[0]]):
        assert a.tobytes() == b.tobytes()
    assert first[0].tobytes() != first[1].tobytes()
    assert src.get("train", 7, seed=1)["image"].tobytes() != first[0].tobytes()
    assert src.get("val", 7)["image"].tobytes() != first[0].tobytes()


@pytest.mark.parametrize("source", list(SOURCES))
def test_index_and_split_errors(source):
    src = SOURCES[source]
    size = src.split_sizes["test"]
    src.get("test", size - 1)
    with pytest.raises(IndexError, match=rf"'test'.*{size}"):
        src.get("test", size)
    with pytest.raises(IndexError):
        src.get("train", -1)
    with pytest.raises(ValueError, match="compositional"):
        src.get("training", 0)


@pytest.mark.parametrize("resolution", [32, 48, 64, 96, 224])
@pytest.mark.parametrize("source", list(SOURCES))
def test_image_format(source, resolution):
    for i in range(8):
        image = SOURCES[source].get("val", i, resolution=resolution)["image"]
        assert image.dtype == np.uint8 and image.shape == (resolution, resolution, 3)
        assert image.flags["C_CONTIGUOUS"]
        assert int(image.max()) - int(image.min()) > 60  # not blank
    with pytest.raises(ValueError, match="resolution"):
        SOURCES[source].get("val", 0, resolution=16)


def test_object_annotations_match_pixels(scanned):
    """The annotated color is what is drawn at the object's center, its box bounds it."""
    for split in ("train", "compositional"):
        for rec in scanned["objects", split][:60]:
            (obj,) = rec["objects"]
            assert obj["shape"] in SHAPES and obj["color"] in COLORS and obj["size"] in SIZES
            assert obj["word"] is None
            x, y = obj["center"]
            assert 0 <= x <= 1 and 0 <= y <= 1
            x0, y0, x1, y1 = obj["bbox"]
            assert all(isinstance(v, int) for v in obj["bbox"])
            assert 0 <= x0 < x * 64 < x1 <= 64 and 0 <= y0 < y * 64 < y1 <= 64
            patch = rec["image"][round(y * 64) - 1:round(y * 64) + 2, round(x * 64) - 1:round(x * 64) + 2]
            assert np.abs(patch.reshape(-1, 3).mean(0) - COLORS[obj["color"]]).max() < 25


def test_sizes_are_distinct(scanned):
    extent = {"small": [], "large": []}
    for rec in scanned["objects", "train"]:
        (obj,) = rec["objects"]
        x0, y0, x1, y1 = obj["bbox"]
        extent[obj["size"]].append(max(x1 - x0, y1 - y0))
    assert max(extent["small"]) < min(extent["large"])


def test_backgrounds_are_unsaturated(scanned):
    """Pixels away from every object are far less colorful than any object color."""
    object_chroma = min(max(c) - min(c) for c in COLORS.values())
    for rec in scanned["scenes", "train"][:50]:
        keep = np.ones((64, 64), bool)
        for obj in rec["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            keep[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = False
        px = rec["image"][keep].astype(int)
        chroma = px.max(1) - px.min(1)
        assert np.median(chroma) < object_chroma / 2


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_held_out_pairs_never_seen(scanned, split):
    for source in ("objects", "scenes", "text_scenes"):
        for rec in scanned[source, split]:
            assert not any((o["color"], o["shape"]) in HELD_OUT_PAIRS for o in rec["objects"])


def test_compositional_split_always_has_a_held_out_pair(scanned):
    for source in ("objects", "scenes", "text_scenes"):
        for rec in scanned[source, "compositional"]:
            assert any((o["color"], o["shape"]) in HELD_OUT_PAIRS for o in rec["objects"])


def test_objects_source_covers_the_classes(scanned):
    classes = {(o["size"], o["color"], o["shape"]) for split in ("train", "val", "test")
               for rec in scanned["objects", split] for o in rec["objects"]}
    all_seen = len(SIZES) * (len(COLORS) * len(SHAPES) - len(HELD_OUT_PAIRS))
    assert len(classes) > 0.9 * all_seen


def test_word_splits():
    train, held = scenes.train_words(), scenes.held_out_words()
    assert len(train) >= 5000 and not set(train) & set(held)
    assert 0.08 < len(held) / (len(train) + len(held)) < 0.12
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in train + held)
    assert len(set(train)) == len(train)


def test_word_sources_respect_word_splits(scanned):
    train, held = set(scenes.train_words()), set(scenes.held_out_words())
    for split in SPLITS:
        allowed = held if split == "compositional" else train
        words = [rec["word"] for rec in scanned["words", split]]
        assert set(words) <= allowed
        assert len(set(words)) > 0.8 * len(words)  # varied
        for rec in scanned["text_scenes", split]:
            ws = [o["word"] for o in rec["objects"]]
            assert set(ws) <= allowed and len(set(ws)) == len(ws)
            assert all(3 <= len(w) <= 5 for w in ws)


def _disjoint(a, b, margin):
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


@pytest.mark.parametrize("source,counts", [("scenes", {1, 2, 3, 4}), ("text_scenes", {1, 2, 3})])
def test_objects_do_not_overlap(scanned, source, counts):
    seen = set()
    for split in SPLITS:
        for rec in scanned[source, split]:
            objs = rec["objects"]
            seen.add(len(objs))
            for i, a in enumerate(objs):
                assert 0 <= a["bbox"][0] < a["bbox"][2] <= 64 and 0 <= a["bbox"][1] < a["bbox"][3] <= 64
                for b in objs[i + 1:]:
                    assert _disjoint(a["bbox"], b["bbox"], margin=1), (a, b)
    assert seen == counts


def test_text_scene_objects_are_large_enough_to_read(scanned):
    for rec in scanned["text_scenes", "train"]:
        for o in rec["objects"]:
            assert o["shape"] in scenes.TEXT_SHAPES
            assert o["bbox"][2] - o["bbox"][0] >= 0.3 * 64


def test_geometry_scales_with_resolution():
    for i in range(5):
        for obj in SOURCES["scenes"].get("test", i, resolution=128)["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128
            assert max(x1 - x0, y1 - y0) > (0.28 if obj["size"] == "large" else 0.12) * 128


def test_missing_asset_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="data/"):
        scenes.asset_path("fonts", "NoSuchFont.ttf")
    assert scenes.asset_path("words", "words.txt").is_file()
