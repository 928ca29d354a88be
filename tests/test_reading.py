"""Reading letters off tokens: the renderer's glyph boxes, glyph targets, the CTC reader, the
reading probe, and a check that the glyph objective can be learned at all (clean words)."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from litlab import pretrain, probe, reading
from litlab.configs import pretrain_encoder
from litlab.data import scenes, tasks

# sha256 (first 16 hex) of 40 images per source and split at seed 3, computed before the renderer
# annotated glyphs: annotating must never move a pixel (every cached feature and result would).
DIGESTS = {
    "objects/train": "f9241a496d60e28f", "objects/compositional": "94766b5e8fc14518",
    "scenes/train": "d3aaa4148422ed6e", "scenes/compositional": "1df88dbb495b4f05",
    "words/train": "040405f41747ef00", "words/compositional": "14247ee3a05a20f4",
    "text_scenes/train": "c41e228648f1303c", "text_scenes/compositional": "470cadb2f023ba9e",
}


def test_annotating_glyphs_left_every_pixel_unchanged():
    for key, expected in DIGESTS.items():
        name, split = key.split("/")
        h = hashlib.sha256()
        for i in range(40):
            h.update(scenes.SOURCES[name].get(split, i, seed=3)["image"].tobytes())
        assert h.hexdigest()[:16] == expected, f"{key}: rendered pixels changed"


def _ink(word, font_name, px, angle, scale=3, side=64):
    """The word's ink mask at output size and its glyph boxes, drawn as the renderer draws."""
    font = scenes._font(font_name, px)
    center = (side * scale / 2 + 3, side * scale / 2 - 7)
    m = Image.new("L", (side * scale, side * scale))
    ImageDraw.Draw(m).text(center, word, font=font, fill=255, anchor="mm")
    m = m.rotate(angle, resample=Image.Resampling.NEAREST, center=center)
    mask = np.asarray(m.reduce(scale)) > 64
    return mask, scenes._glyph_boxes(font, word, center, scale, angle=angle)


@pytest.mark.parametrize("font_name,angle", [("DejaVuSans-Bold.ttf", 0.0), ("DejaVuSerif-Bold.ttf", 7.5),
                                             ("DejaVuSansMono-Bold.ttf", -7.5), ("default", 4.0)])
def test_glyph_boxes_cover_the_ink_letter_by_letter(font_name, angle):
    word = "waxing"
    mask, glyphs = _ink(word, font_name, 42, angle)
    assert "".join(g[0] for g in glyphs) == word
    ys, xs = np.nonzero(mask)
    inside = np.zeros(len(xs), bool)
    centers = []
    for _, x0, y0, x1, y1 in glyphs:
        here = (xs + 0.5 >= x0 - 0.5) & (xs + 0.5 <= x1 + 0.5) & (ys + 0.5 >= y0 - 0.5) & (ys + 0.5 <= y1 + 0.5)
        assert here.sum() >= 3, "every glyph box holds ink"
        inside |= here
        centers.append(((x0 + x1) / 2, (y0 + y1) / 2))
    assert inside.mean() > 0.97, "the glyph boxes hold the word's ink"
    cx, cy = np.array(centers).T
    assert np.all(np.diff(cx) > 0), "letters run left to right"
    # Counter-clockwise rotation (PIL's) lifts the end of the word: later letters sit higher.
    slope = np.polyfit(cx, cy, 1)[0]
    assert np.sign(slope) == -np.sign(angle) or angle == 0


def test_rendered_records_carry_their_letters():
    for i in range(10):
        rec = scenes.SOURCES["words"].get("train", i)
        assert "".join(g[0] for g in rec["glyphs"]) == rec["word"]
        assert all(0 <= v <= 64 for g in rec["glyphs"] for v in g[1:])
        scene = scenes.SOURCES["text_scenes"].get("train", i)
        for obj in scene["objects"]:
            assert "".join(g[0] for g in obj["glyphs"]) == obj["word"]
            x0, y0, x1, y1 = obj["bbox"]
            for _, gx0, gy0, gx1, gy1 in obj["glyphs"]:  # a word sits inside its object
                assert x0 - 1 <= (gx0 + gx1) / 2 <= x1 + 1 and y0 - 1 <= (gy0 + gy1) / 2 <= y1 + 1
    assert "glyphs" not in scenes.SOURCES["scenes"].get("train", 0)


def test_glyph_targets_put_letters_in_the_token_under_their_center():
    glyphs = [("a", 0, 0, 6, 6), ("b", 4, 1, 7, 7), ("c", 9, 0, 15, 6), ("z", 60, 60, 66, 66)]
    t = reading.glyph_targets(glyphs, 64, 8).reshape(8, 8, reading.SLOTS)
    n = reading.NO_LETTER
    assert t[0, 0].tolist() == [0, 1, n]  # centers 3.0 and 5.5: same token, left to right
    assert t[0, 1].tolist() == [2, n, n]
    assert t[7, 7].tolist() == [25, n, n]  # a center past the edge is clipped into the grid
    assert (t != n).sum() == 4
    with pytest.raises(ValueError, match="SLOTS"):
        reading.glyph_targets([("i", x, 0, x + 1, 5) for x in range(4)], 64, 8, what="crowded")
    with pytest.raises(ValueError, match="not a lowercase letter"):
        reading.glyph_targets([("A", 0, 0, 5, 5)], 64, 8)


def test_glyph_targets_of_rendered_words_spell_them():
    """Reading the slots column by column (rows top to bottom) gives back the word, except where
    a slanted word crosses a row inside one column: rare, and the CTC reader handles it."""
    ok = 0
    for i in range(50):
        rec = scenes.SOURCES["words"].get("train", i)
        t = reading.glyph_targets(reading.record_glyphs(rec), 64, 8).reshape(8, 8, reading.SLOTS)
        spelled = "".join(reading.CHARS[c] for col in range(8) for row in range(8) for c in t[row, col]
                          if c != reading.NO_LETTER)
        assert sorted(spelled) == sorted(rec["word"])  # every letter is in exactly one slot
        ok += spelled == rec["word"]
    assert ok >= 40


def test_ctc_labels_decode_and_scores():
    words = ["cab", "", "zebra", "abcdefgh"]
    labels = reading.ctc_labels(words, 8)
    assert labels[0].tolist() == [3, 1, 2] + [-1] * 5 and (labels[1] == -1).all()
    frames = np.zeros((4, 24), np.int64)  # blank everywhere, then the letters with repeats
    for i, w in enumerate(words):
        path = [c for ch in w for c in (reading.CHARS.index(ch) + 1, reading.CHARS.index(ch) + 1, 0)]
        frames[i, :len(path)] = path
    logits = np.eye(27)[frames]
    assert reading.ctc_decode(logits) == words
    assert reading.ctc_decode(np.eye(27)[[[1, 1, 1]]]) == ["a"]  # repeats merge without a blank
    s = reading.reading_scores(["cab", "zebre"], ["cab", "zebra"])
    assert s == {"char_accuracy": pytest.approx(0.9), "exact_word": 0.5, "n": 2}
    assert reading.reading_scores(["abcdefgh"], ["ab"])["char_accuracy"] == 0.0  # floored
    with pytest.raises(ValueError, match="lowercase"):
        reading.ctc_labels(["Cab"], 8)
    with pytest.raises(ValueError, match="one prediction per word"):
        reading.reading_scores([], [])


def test_ctc_loss_prefers_the_right_word():
    labels = reading.ctc_labels(["ab", "ab"], 4)
    good = np.full((24, 27), -5.0)
    good[0, 1] = good[1, 2] = 5.0
    good[2:, 0] = 5.0
    bad = good.copy()
    bad[1] = -5.0
    bad[1, 3] = 5.0  # "ac"
    loss = np.asarray(reading.ctc_loss(np.stack([good, bad]), labels))
    assert loss[0] < 0.1 < 5 < loss[1]


def test_columns_stack_each_columns_rows():
    tokens = np.arange(4).reshape(1, 4, 1)  # 2x2 grid, row-major: [[0, 1], [2, 3]]
    np.testing.assert_array_equal(np.asarray(reading.columns(tokens, 2)), [[[0, 2], [1, 3]]])


def _oracle(split_images):
    """An 'encoder' whose tokens are the one-hot glyph targets of the image: perfect reading."""
    table = {}
    for images, records in split_images:
        for img, rec in zip(images, records):
            t = reading.glyph_targets(reading.record_glyphs(rec), 64, 8)
            table[img.tobytes()] = np.eye(len(reading.CHARS) + 1, dtype=np.float32)[t].reshape(64, -1)
    return lambda images: np.stack([table[img.tobytes()] for img in images])


def test_reading_probe_reads_what_tokens_say_and_nothing_else():
    limits = {"train": 600, "test": 100, "compositional": 100}
    data = [tasks.read_records("words", s, seed=0, resolution=64, limit=n) for s, n in limits.items()]
    kw = dict(train_limit=600, test_limit=100, steps=400)
    res = probe.reading_probe(_oracle(data), 8, **kw)
    assert res["test"]["n"] == 100 and res["n_train"] == 600
    for split in ("test", "compositional"):  # held-out words are read as well as seen ones
        assert res[split]["char_accuracy"] > 0.95 and res[split]["exact_word"] > 0.85, res
    noise = lambda images: np.random.default_rng(len(images)).normal(size=(len(images), 64, 16))
    res = probe.reading_probe(noise, 8, **kw)
    assert res["test"]["exact_word"] == 0.0 and res["test"]["char_accuracy"] < 0.3, res


def _clean_words(words, px=22, scale=3):
    """Black words on white, one font, one size, centred, no noise: the easiest reading there is."""
    font = scenes._font("DejaVuSans-Bold.ttf", px * scale)
    images, glyphs = [], []
    for w in words:
        m = Image.new("L", (64 * scale, 64 * scale), 255)
        ImageDraw.Draw(m).text((96, 96), w, font=font, fill=0, anchor="mm")
        images.append(np.repeat(np.asarray(m.reduce(scale))[..., None], 3, -1))
        glyphs.append(reading.glyph_targets(scenes._glyph_boxes(font, w, (96, 96), scale), 64, 8))
    return np.stack(images), np.stack(glyphs)


def test_the_glyph_objective_learns_clean_words():
    """Rules out bugs in the objective: on clean short words a tiny ViT must leave the letter
    prior far behind within a few hundred steps (it generalises to unseen words of the same
    letters, so it learned glyphs, not images)."""
    config = pretrain_encoder.get_config("smoke")
    config.model.update(width=64, mlp_dim=128, num_heads=4)
    config.update(total_steps=300, warmup_steps=20, lr=3e-3, glyph_weight=1.0, ctc_weight=0.0, dense_weight=0.0)
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), 4)) for _ in range(160)]
    images, glyphs = _clean_words(words)
    n, num_labels = len(words), len(pretrain.label_names())
    batch_all = {"images": images, "labels": np.zeros((n, num_labels), np.uint8),
                 "objects": np.zeros((n, 1 + pretrain.MAX_COUNT, num_labels), np.uint8),
                 "patch_obj": np.zeros((n, 64), np.int8), "dense_mask": np.zeros((n, num_labels), np.uint8),
                 "glyphs": glyphs, "spelling": reading.ctc_labels(words, 8)}
    model = pretrain.make_model(config.model, 64, num_classes=num_labels)
    tx = pretrain.make_optimizer(config)
    params = pretrain.init_params(model, config, np.full(num_labels, 0.01))
    state = (params, tx.init(params))
    step = pretrain.make_train_step(model, tx, (0.0, 1.0, 0.0))
    train, held = slice(0, 128), slice(128, None)
    for s in range(config.total_steps):
        idx = pretrain.batch_indices(128, 32, s, seed=0)
        state, _ = step(state, {k: v[train][idx] for k, v in batch_all.items()})
    _, _, glyph_pred, _ = pretrain.predict(model, state[0], images[held])
    letters = glyphs[held] != reading.NO_LETTER
    accuracy = (glyph_pred == glyphs[held])[letters].mean()
    assert accuracy > 0.8, f"letter top-1 {accuracy:.2f} on unseen clean words (prior 1/8)"


def test_render_cache_from_before_glyph_boxes_is_not_served(tmp_path, monkeypatch):
    """A records cache written before glyph boxes existed (same pixels, no glyphs) must not be
    read back: glyph targets would silently be empty."""
    monkeypatch.setenv("LITLAB_CACHE", str(tmp_path))
    images, records = tasks.read_records("words", "val", seed=5, resolution=64, limit=3)
    stale = [{k: v for k, v in r.items() if k != "glyphs"} for r in records]
    np.savez(tmp_path / "words-val-r64-s5-n3.npz", images=images, records=np.array(json.dumps(stale)))
    _, again = tasks.read_records("words", "val", seed=5, resolution=64, limit=3)
    assert all(r["glyphs"] for r in again)
