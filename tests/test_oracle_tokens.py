"""Oracle image tokens (the renderer's boxes as tokens) and the single-family question tasks."""

import numpy as np
import pytest

from litlab import config as config_lib, features, oracle_tokens, runs, train
from litlab.data import language, tasks
from litlab.pretrain import patch_objects


def test_an_oracle_token_names_the_color_and_shape_of_the_object_under_it():
    objects = [{"bbox": (0, 0, 20, 20), "color": "red", "shape": "star"},
               {"bbox": (40, 33, 64, 41), "color": "blue", "shape": "circle"}]
    t = oracle_tokens.tokens_for(objects, 64, 8, 32).reshape(8, 8, 32)
    colors, shapes = oracle_tokens.COLORS, oracle_tokens.SHAPES
    red_star = np.zeros(32, np.float32)
    red_star[colors.index("red")] = red_star[len(colors) + shapes.index("star")] = 1
    blue_circle = np.zeros(32, np.float32)
    blue_circle[colors.index("blue")] = blue_circle[len(colors) + shapes.index("circle")] = 1
    np.testing.assert_array_equal(t[:2, :2], np.broadcast_to(red_star, (2, 2, 32)))
    np.testing.assert_array_equal(t[4, 5:], np.broadcast_to(blue_circle, (3, 32)))
    assert (t.sum(-1) > 0).sum() == 4 + 3, "background tokens are all zeros"
    with pytest.raises(ValueError, match="encoder width of at least 16"):
        oracle_tokens.tokens_for(objects, 64, 8, 8)


def test_oracle_tokens_follow_the_benchmark_records_in_key_order():
    _, records = tasks.read_records("scenes", "test", seed=0, resolution=64, limit=12)
    keys = [records[i]["image_key"] for i in (7, 0, 11, 3)]
    t = oracle_tokens.tokens(keys, (64, 32), seed=0, resolution=64)
    assert t.shape == (4, 64, 32)
    for row, i in enumerate((7, 0, 11, 3)):
        objects = records[i]["objects"]
        owner = patch_objects(objects, 64, 8)
        np.testing.assert_array_equal(t[row].sum(-1) > 0, owner > 0)
        for token, k in zip(t[row], owner):
            if k:
                o = objects[k - 1]
                assert oracle_tokens.COLORS[token[:8].argmax()] == o["color"]
                assert oracle_tokens.SHAPES[token[8:16].argmax()] == o["shape"]
    with pytest.raises(ValueError, match="'words/test/0'.*no object boxes"):
        oracle_tokens.tokens(["words/test/0"], (64, 32), seed=0, resolution=64)
    with pytest.raises(ValueError, match="'photos/cat.jpg' is not an image of the embedded benchmark"):
        oracle_tokens.tokens(["photos/cat.jpg"], (64, 32), seed=0, resolution=64)


def _oracle_config(**overrides):
    c = config_lib.load("litlab/configs/quickstart.py:smoke")
    return config_lib.override(c, {"mixture": "scenes_vqa_existence", "inputs.image_tokens": "oracle", **overrides})


def test_an_oracle_run_reads_oracle_tokens_and_never_runs_the_encoder(tok, monkeypatch):
    config = _oracle_config()
    train.validate(config)
    model = runs.build_model(config, tok.vocab_size)
    params = runs.init_params(model, config)
    data = runs.load_data(config, tok)
    monkeypatch.setattr(features, "encode_all", lambda *a, **k: pytest.fail("the encoder ran"))
    got = runs.image_tokens(config, model, params, data.images, data.image_keys)
    n, d = model.token_shape()
    want = oracle_tokens.tokens(data.image_keys, (n, d), seed=config.data.seed, resolution=64)
    assert got.dtype == features.BF16 and got.shape == (len(data.images), n, d)
    np.testing.assert_array_equal(got.astype(np.float32), want)


def test_encoder_plus_oracle_keeps_the_encoder_tokens_beside_the_oracle_features(tok):
    config = _oracle_config(**{"inputs.image_tokens": "encoder+oracle"})
    train.validate(config)
    model = runs.build_model(config, tok.vocab_size)
    params = runs.init_params(model, config)
    data = runs.load_data(config, tok)
    got = runs.image_tokens(config, model, params, data.images, data.image_keys).astype(np.float32)
    encoder = runs.image_tokens(config_lib.override(config, {"inputs.image_tokens": "encoder"}), model, params,
                                data.images, data.image_keys).astype(np.float32)
    oracle = runs.image_tokens(_oracle_config(), model, params, data.images, data.image_keys).astype(np.float32)
    k = oracle_tokens.FEATURES
    np.testing.assert_array_equal(got[..., :k], oracle[..., :k])
    np.testing.assert_array_equal(got[..., k:], encoder[..., k:])
    assert np.abs(encoder[..., :k]).sum() > 0 and not np.array_equal(got, oracle)
    with pytest.raises(ValueError, match=r"differ in shape"):
        oracle_tokens.overlay(encoder[:, :4], oracle)


def test_oracle_settings_that_cannot_work_are_refused_by_name():
    with pytest.raises(ValueError, match=r"'inputs.image_tokens' must be one of \('encoder', 'oracle', "
                                         r"'encoder\+oracle'\), got 'oracel'"):
        train.validate(_oracle_config(**{"inputs.image_tokens": "oracel"}))
    with pytest.raises(ValueError, match=r"inputs.image_tokens='encoder\+oracle' replaces"):
        train.validate(_oracle_config(**{"inputs.image_tokens": "encoder+oracle", "feature_cache": "none"}))
    with pytest.raises(ValueError, match="needs feature_cache='memory' or 'disk'"):
        train.validate(_oracle_config(feature_cache="none"))
    with pytest.raises(ValueError, match="encoder.trainable=False"):
        train.validate(_oracle_config(**{"encoder.trainable": True, "feature_cache": "none"}))
    old = config_lib.load("litlab/configs/quickstart.py").to_dict()
    del old["inputs"]["image_tokens"]  # a run saved before the key existed read the encoder
    assert config_lib.from_saved(old).inputs.image_tokens == "encoder"


@pytest.mark.parametrize("base,families", [("scenes_vqa", language.FAMILIES), ("text_vqa", language.TEXT_FAMILIES)])
def test_a_single_family_task_holds_only_that_family(base, families):
    seen = set()
    for family in families:
        split = tasks.load_task(f"{base}_{family}", "test", limit=40)
        assert split.families and set(split.families) == {family}
        assert tasks.get_task(f"{base}_{family}").metrics == tasks.get_task(base).metrics
        seen.add(family)
    assert set(tasks.load_task(base, "test", limit=40).families) == seen
