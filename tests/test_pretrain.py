"""The encoder pretraining (litlab.pretrain), its linear probe, and the shipped encoder."""

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from litlab import pretrain, probe, reading
from litlab.configs import pretrain_encoder
from litlab.data import scenes, tasks
from litlab.models import vit

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "encoder" / "vit_pretrained.npz"
CARD = ROOT / "data" / "encoder" / "CARD.md"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    config = pretrain_encoder.get_config("smoke")
    out = tmp_path_factory.mktemp("enc") / "enc.npz"
    params, summary = pretrain.train(config, out=str(out), progress=False)
    return config, out, params, summary


def test_labels_of_a_hand_built_scene():
    rec = {"objects": [
        {"shape": "circle", "color": "red", "size": "large", "center": (0.1, 0.15), "word": None},
        {"shape": "star", "color": "blue", "size": "small", "center": (0.9, 0.5), "word": None}]}
    got = pretrain.record_labels(rec)
    assert got == {
        "count/2",
        "shape/circle", "color/red", "size/large", "color_shape/red circle", "size_color/large red",
        "size_shape/large circle", "class/large red circle", "cell/0", "cell_color/0 red",
        "cell_shape/0 circle",
        "shape/star", "color/blue", "size/small", "color_shape/blue star", "size_color/small blue",
        "size_shape/small star", "class/small blue star", "cell/5", "cell_color/5 blue",
        "cell_shape/5 star"}
    y = pretrain.multi_hot([rec])[0]
    names = pretrain.label_names()
    assert {names[i] for i in np.flatnonzero(y)} == got


def test_tokens_are_owned_by_the_object_under_their_center():
    objs = [{"bbox": (0, 0, 20, 20)}, {"bbox": (40, 33, 64, 41)}]
    owner = pretrain.patch_objects(objs, 64, 8).reshape(8, 8)  # patch centers at 4, 12, 20, ...
    expected = np.zeros((8, 8), np.int8)
    expected[:2, :2] = 1
    expected[4, 5:] = 2
    np.testing.assert_array_equal(owner, expected)


def test_dense_mask_skips_count_and_unlocated_letters():
    names = np.array(pretrain.label_names())
    groups = np.array([n.split("/")[0] for n in names])
    scenes_mask = pretrain.dense_label_mask("text_scenes").astype(bool)
    words_mask = pretrain.dense_label_mask("words").astype(bool)
    assert set(groups[~scenes_mask]) == {"count"}
    assert set(groups[~words_mask]) == {"count", "char", "char_at", "char_from_end", "length"}


def test_labels_of_words():
    worded = {"shape": "square", "color": "green", "size": "large", "center": (0.5, 0.9), "word": "ox"}
    assert {"cell/7", "length/2", "char_at/1 x", "char_from_end/0 x"} <= pretrain.object_labels(worded)
    got = pretrain.record_labels({"word": "cab"})
    assert got == {"count/0", "length/3", "char/c", "char/a", "char/b", "char_at/0 c", "char_at/1 a",
                   "char_at/2 b", "char_from_end/0 b", "char_from_end/1 a", "char_from_end/2 c"}


def test_held_out_pair_has_no_label():
    color, shape = scenes.HELD_OUT_PAIRS[0]
    rec = {"objects": [{"shape": shape, "color": color, "size": "small", "center": (0.5, 0.5)}]}
    with pytest.raises(KeyError, match="not in the vocabulary"):
        pretrain.multi_hot([rec])


def test_labels_of_rendered_records_are_consistent():
    recs = [scenes.SOURCES[s].get("train", i, seed=10_000) for s in scenes.SOURCES for i in range(5)]
    y = pretrain.multi_hot(recs)
    names = pretrain.label_names()
    for rec, row in zip(recs, y):
        on = {names[i] for i in np.flatnonzero(row)}
        assert f"count/{len(rec.get('objects', []))}" in on
        for o in rec.get("objects", []):
            assert f"class/{o['size']} {o['color']} {o['shape']}" in on
        if "word" in rec:
            assert f"length/{len(rec['word'])}" in on


def test_average_precision():
    assert pretrain.average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == 1.0
    assert pretrain.average_precision(np.array([0.9, 0.8, 0.1]), np.array([0, 1, 0])) == 0.5


def test_batches_are_a_pure_function_of_step_and_seed():
    a = pretrain.batch_indices(10, 4, 3, seed=1)
    assert np.array_equal(a, pretrain.batch_indices(10, 4, 3, seed=1))
    epoch = np.concatenate([pretrain.batch_indices(10, 5, s, seed=1) for s in range(2)])
    assert sorted(epoch) == list(range(10))


def test_pool_shares_sum_to_the_pool_size():
    # Rounding each source's share alone gave 2+3+6+4 = 15 images for a pool of 16 (smaller than
    # the smoke batch); the shares must add up and follow the weights.
    weights = dict(objects=0.15, scenes=0.2, words=0.4, text_scenes=0.25)
    for size in (4, 16, 17, 1000):
        counts = pretrain.source_counts(weights, size)
        assert sum(counts.values()) == size and min(counts.values()) >= 1
    assert pretrain.source_counts(weights, 1000) == dict(objects=150, scenes=200, words=400, text_scenes=250)
    with pytest.raises(ValueError, match="data.sources"):
        pretrain.source_counts(dict(objects=1.0, words=0.0), 10)
    with pytest.raises(ValueError, match="pool_size"):
        pretrain.source_counts(weights, 3)


def test_smoke_training_learns_and_saves_the_encoder(smoke_run):
    config, out, params, summary = smoke_run
    losses = [entry["loss"] for entry in summary["loss"]]
    assert len(losses) == config.total_steps
    # The pool is one batch, seen every step: the model must fit it.
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    for term in ("glyph", "ctc"):  # the pool holds word images
        values = [entry[term] for entry in summary["loss"]]
        assert values[0] > 0 and np.mean(values[-3:]) < 0.8 * np.mean(values[:3]), term
    for key in ("glyph_letter_top1", "words_exact", "words_char_accuracy"):
        assert 0 <= summary["val"][-1][key] <= 1
    assert summary["val"][-1]["step"] == config.total_steps
    assert 0 < summary["val"][-1]["mAP"] <= 1

    loaded = vit.load_params(out)
    assert "head" not in loaded
    keys = set(vit.flatten(loaded))
    assert {"embedding/kernel", "embedding/bias", "Transformer/encoder_norm/scale",
            "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
            "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"} <= keys
    assert not any(k.startswith("head") for k in keys)
    assert summary["sha256"] == pretrain.sha256(out)
    for k, v in vit.flatten(params).items():
        np.testing.assert_array_equal(vit.flatten(loaded)[k], v)


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections' file loader
def test_cli_overrides_out_and_determinism(smoke_run, tmp_path, capsys):
    _, _, _, summary = smoke_run
    out = tmp_path / "cli.npz"
    # Same warmup, so the first 3 losses must match the fixture's run to the bit.
    pretrain.main(["--config", f"{pretrain.DEFAULT_CONFIG}:smoke", "--config.total_steps=3",
                   "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)  # stdout is the summary alone
    assert printed["steps"] == 3 and printed["out"] == str(out)
    assert printed["loss"] == summary["loss"][:3]
    assert vit.load_params(out)["embedding"]["kernel"].shape == (8, 8, 3, 32)


def test_probe_runs_on_a_tiny_split(smoke_run):
    config, _, params, _ = smoke_run
    res = probe.linear_probe(params, config.model, train_limit=48, test_limit=16, steps=50)
    assert res["n_train"] == 48 and res["n_test"] == 16 and res["feature_dim"] == config.model.width
    assert res["train_top1"] > 0.5  # 48 images, ~40 classes, 32 dims: separable
    assert 0 <= res["test_top1"] <= 1


def test_shipped_encoder_loads_and_matches_its_card():
    config = pretrain_encoder.get_config()
    card = CARD.read_text()
    digest = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", card)
    assert digest, "CARD.md must state the sha256 of the shipped .npz"
    assert pretrain.sha256(SHIPPED) == digest.group(1)
    assert SHIPPED.stat().st_size < 15 * 2**20

    model = vit.Model(**config.model)
    res = config.data.resolution
    init = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))["params"]
    params = vit.load(init, SHIPPED, config.model)
    images = np.stack([scenes.SOURCES["objects"].get("test", i)["image"] for i in range(2)])
    _, out = model.apply({"params": params}, pretrain.preprocess(images))
    assert out["encoded"].shape == (2, (res // config.model.patch_size[0]) ** 2, config.model.width)
    assert np.isfinite(np.asarray(out["encoded"])).all()


def test_loss_terms_combine_by_their_weights():
    config = pretrain_encoder.get_config("smoke")
    pool = pretrain.build_pool(config.data, "train", 16, config.model.patch_size[0])
    readable = pool["spelling"][:, 0] >= 0
    assert readable.any() and not readable.all()
    assert (pool["glyphs"] != reading.NO_LETTER).any()
    model = pretrain.make_model(config.model, config.data.resolution, num_classes=len(pretrain.label_names()))
    params = pretrain.init_params(model, config, pool["labels"].mean(0))
    batch = {k: pool[k] for k in pretrain.TRAIN_KEYS}
    loss = lambda *w, b=batch: pretrain.loss_fn(model, w, params, b)
    total, parts = loss(1.0, 1.0, 1.0)
    assert all(float(parts[k]) > 0 for k in ("image", "dense", "glyph", "ctc"))
    np.testing.assert_allclose(total, sum(parts.values()), rtol=1e-6)
    np.testing.assert_allclose(loss(0.0, 0.0, 0.0)[0], parts["image"], rtol=1e-6)
    np.testing.assert_allclose(loss(0.0, 2.0, 0.5)[0], parts["image"] + 2 * parts["glyph"] + 0.5 * parts["ctc"],
                               rtol=1e-6)
    # Only word images are spelled: with none in the batch the CTC term is exactly 0.
    no_words = dict(batch, spelling=np.full_like(batch["spelling"], -1))
    assert float(loss(1.0, 1.0, 1.0, b=no_words)[1]["ctc"]) == 0.0


def test_init_loads_a_big_vision_encoder_but_not_its_head(smoke_run, tmp_path):
    config, out, params, _ = smoke_run
    config = pretrain_encoder.get_config("smoke")
    config.init = str(out)
    model = pretrain.make_model(config.model, config.data.resolution, num_classes=len(pretrain.label_names()))
    started = pretrain.init_params(model, config, np.full(len(pretrain.label_names()), 0.1))
    for k, v in vit.flatten(params).items():
        np.testing.assert_array_equal(vit.flatten(started["encoder"])[k], v)
    np.testing.assert_allclose(started["encoder"]["head"]["bias"], np.log(0.1 / 0.9), rtol=1e-5)


def test_a_killed_run_resumes_to_the_same_encoder(smoke_run, tmp_path, monkeypatch):
    """Killed after its step-8 checkpoint, the rerun resumes there and ends where an uninterrupted
    run ends, bit for bit; a workdir of another config is refused."""
    config, _, params, summary = smoke_run
    real = pretrain.batch_indices

    def killed_at_10(n, batch_size, step, seed):
        if step == 10:
            raise KeyboardInterrupt
        return real(n, batch_size, step, seed)

    monkeypatch.setattr(pretrain, "batch_indices", killed_at_10)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(config, workdir=tmp_path / "run", out="", progress=False)
    monkeypatch.setattr(pretrain, "batch_indices", real)
    resumed, again = pretrain.train(config, workdir=tmp_path / "run", out="", progress=False)
    assert again["resumed_from"] == 8
    assert again["loss"] == summary["loss"]
    for k, v in vit.flatten(params).items():
        np.testing.assert_array_equal(vit.flatten(resumed)[k], v)
    other = pretrain_encoder.get_config("smoke")
    other.lr = 1e-3
    with pytest.raises(ValueError, match="another config"):
        pretrain.train(other, workdir=tmp_path / "run", out="", progress=False)


def _pair_oracle(objects_of, resolution=64, patch=8):
    """An 'encoder' whose tokens are the one-hot color-shape pair under each token: existence is
    then exactly readable."""
    from litlab.data.language import COLORS, SHAPES
    combos = [(c, s) for c in COLORS for s in SHAPES]

    def encode(images):
        out = []
        for img in images:
            objects = objects_of[img.tobytes()]
            owner = pretrain.patch_objects(objects, resolution, patch)
            ids = np.array([0] + [1 + combos.index((o["color"], o["shape"])) for o in objects])[owner]
            out.append(np.eye(len(combos) + 1, dtype=np.float32)[ids])
        return np.stack(out)
    return encode


def test_existence_probe_answers_from_tokens_that_say_it_and_not_from_noise():
    objects_of = {}
    for split, n in (("train", 300), ("test", 100)):
        images, records = tasks.read_records("scenes", split, seed=0, resolution=64, limit=n)
        objects_of.update({img.tobytes(): r["objects"] for img, r in zip(images, records)})
    kw = dict(train_limit=300, test_limit=100, steps=300)
    res = probe.existence_probe(_pair_oracle(objects_of), 8, **kw)
    assert res["n_train"] == 300 and res["n_test"] == 100
    assert res["token_top1"] > 0.95 and res["color_shape_present"] > 0.9 and res["shape_present"] > 0.9, res
    noise = lambda images: np.random.default_rng(len(images)).normal(size=(len(images), 64, 16)).astype(np.float32)
    res = probe.existence_probe(noise, 8, **kw)
    assert abs(res["color_shape_present"] - 0.5) < 0.1 and abs(res["shape_present"] - 0.5) < 0.1, res


def test_position_probe_finds_positions_that_tokens_carry_and_not_in_noise():
    kw = dict(train_limit=40, test_limit=20, steps=200)
    rng = np.random.default_rng(0)
    noise = lambda images: rng.normal(size=(len(images), 64, 16)).astype(np.float32)
    # Noise plus one-hot codes of the token's row and column: linearly separable.
    code = np.concatenate([np.eye(8)[np.arange(64) // 8], np.eye(8)[np.arange(64) % 8]], -1) * 3.0
    coded = lambda images: np.concatenate([noise(images), np.broadcast_to(code, (len(images), 64, 16))], -1)
    res = probe.position_probe(coded, 8, **kw)
    assert res["chance"] == 1 / 8 and set(res) == {"steps", "chance", "scenes", "words"}
    for source in ("scenes", "words"):
        assert res[source]["n_train"] == 40 and res[source]["n_test"] == 20
        assert res[source]["row_top1"] > 0.95 and res[source]["column_top1"] > 0.95, res
    res = probe.position_probe(noise, 8, **kw)
    assert all(abs(res[s][k] - 1 / 8) < 0.06 for s in ("scenes", "words") for k in ("row_top1", "column_top1")), res


def test_probe_cli_refuses_two_probes_and_a_non_square_grid_for_position():
    with pytest.raises(SystemExit, match="separate probes"):
        probe.main(["--encoder", "missing.npz", "--reading", "--position"])
    with pytest.raises(SystemExit, match=r"square token grid; the config's model.patch_size is \(8, 16\)"):
        probe.main(["--encoder", "missing.npz", "--position", "--config.model.patch_size=(8,16)"])
