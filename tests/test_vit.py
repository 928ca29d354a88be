"""Tests for litlab.models.vit: big_vision parity, pooling variants, checkpoint I/O and load()."""

import functools
import math
import os
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from litlab.models import vit

# Small model used by most tests: 16x16 images and 4x4 patches give a 4x4 grid.
SMALL = dict(width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=(4, 4))


def _fixture_dir():
    env = os.environ.get("LITLAB_BV_FIXTURES")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "big_vision"
    if not (path / "vit_tiny_gap.npz").is_file():
        pytest.skip(f"big_vision golden fixtures not found in {path}: they are shared test data kept "
                    "outside the repository and are not part of a fresh checkout; set "
                    "LITLAB_BV_FIXTURES to the folder holding vit_tiny_gap.npz and vit_tiny_gap_io.npz")
    return path


def _images(n=2, size=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _param_shapes(model, images):
    """The model's param tree as ShapeDtypeStructs, traced without compiling anything."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]


def _apply(model, params, images, **kw):
    """Jitted forward pass. On CPU one XLA compile per model costs far less than eager per-op compiles."""
    return jax.jit(functools.partial(model.apply, **kw))({"params": params}, images)


def _random_params(model, images, seed=1):
    """Random params in the model's tree.

    Real init is slow on CPU (one threefry program is compiled per param shape).
    Its zero and tiny inits would also hide wiring bugs.
    """
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        _param_shapes(model, images))


# --- An independent float64 NumPy ViT, used as the reference. ---

def _np_ln(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_attn(xq, xkv, p):
    q, k, v = (np.einsum("nld,dhk->nlhk", x, p[n]["kernel"]) + p[n]["bias"]
               for n, x in (("query", xq), ("key", xkv), ("value", xkv)))
    logits = np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("nhqs,nshk->nqhk", w, v)
    return np.einsum("nqhk,hkd->nqd", o, p["out"]["kernel"]) + p["out"]["bias"]


def _np_mlp(x, p):
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _np_vit(params, images, patch, pool, posemb=None):
    """Returns (head_input, pre_logits, logits_or_None, encoded) for a per-block param tree."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    n, hh, ww, c = images.shape
    (ph, pw), gh, gw = patch, hh // patch[0], ww // patch[1]
    patches = images.astype(np.float64).reshape(n, gh, ph, gw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = p["embedding"]["kernel"]
    x = patches.reshape(n, gh * gw, -1) @ kernel.reshape(-1, kernel.shape[-1]) + p["embedding"]["bias"]
    x = x + (p["pos_embedding"] if posemb is None else posemb)
    if pool == "tok":
        x = np.concatenate([np.repeat(p["cls"], n, axis=0), x], axis=1)
    t = p["Transformer"]
    for i in range(sum(k.startswith("encoderblock_") for k in t)):
        b = t[f"encoderblock_{i}"]
        y = _np_ln(x, b["LayerNorm_0"])
        x = x + _np_attn(y, y, b["MultiHeadDotProductAttention_0"])
        x = x + _np_mlp(_np_ln(x, b["LayerNorm_1"]), b["MlpBlock_0"])
    encoded = _np_ln(x, t["encoder_norm"])
    if pool == "gap":
        pooled = encoded.mean(1)
    elif pool == "tok":
        pooled = encoded[:, 0]
    else:  # map
        m = p["MAPHead_0"]
        probe = np.repeat(m["probe"], n, axis=0)
        y = _np_attn(probe, encoded, m["MultiHeadDotProductAttention_0"])
        pooled = (y + _np_mlp(_np_ln(y, m["LayerNorm_0"]), m["MlpBlock_0"]))[:, 0]
    pre = pooled
    if "pre_logits" in p:
        pre = np.tanh(pooled @ p["pre_logits"]["kernel"] + p["pre_logits"]["bias"])
    logits = pre @ p["head"]["kernel"] + p["head"]["bias"] if "head" in p else None
    return pooled, pre, logits, encoded


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


# --- big_vision golden fixture. ---

FIXTURE_MODEL = dict(num_classes=0, width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(8, 8),
                     pool_type="gap", posemb="learn")


def test_fixture_param_tree_is_identical():
    path = _fixture_dir()
    io = np.load(path / "vit_tiny_gap_io.npz")
    init = vit.flatten(_param_shapes(vit.Model(**FIXTURE_MODEL), io["images"]))
    ckpt = vit.flatten(vit.load_params(path / "vit_tiny_gap.npz"))
    assert len(ckpt) == 37
    assert {k: v.shape for k, v in init.items()} == {k: v.shape for k, v in ckpt.items()}


def test_fixture_outputs_match_big_vision():
    path = _fixture_dir()
    io = np.load(path / "vit_tiny_gap_io.npz")
    model = vit.Model(**FIXTURE_MODEL)
    params = vit.load_params(path / "vit_tiny_gap.npz")
    pooled, out = _apply(model, params, io["images"])
    np.testing.assert_allclose(pooled, io["pooled"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["encoded"], io["tokens"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["head_input"], pooled)
    np.testing.assert_array_equal(out["pre_logits"], pooled)
    assert "logits" not in out

    # load() passes the weights through unchanged. A shape-only init tree (jax.eval_shape) is enough.
    loaded = vit.flatten(vit.load(_param_shapes(model, io["images"]), str(path / "vit_tiny_gap.npz"), {}))
    for name, value in vit.flatten(params).items():
        np.testing.assert_array_equal(loaded[name], value)

    # The NumPy reference used by the other tests agrees with big_vision too.
    ref_pooled, _, _, ref_tokens = _np_vit(params, io["images"], (8, 8), "gap")
    np.testing.assert_allclose(ref_pooled, io["pooled"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref_tokens, io["tokens"], rtol=1e-5, atol=1e-5)


# --- Model variants against the NumPy reference. ---

def test_map_pooling_matches_reference():
    images = _images()
    model = vit.Model(pool_type="map", **SMALL)
    params = _random_params(model, images)
    assert set(params["MAPHead_0"]) == {
        "probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0"}
    assert params["MAPHead_0"]["probe"].shape == (1, 1, 16)
    pooled, out = _apply(model, params, images)
    ref_pooled, _, _, ref_tokens = _np_vit(params, images, (4, 4), "map")
    _close(pooled, ref_pooled)
    _close(out["encoded"], ref_tokens)


def test_tok_pooling_rep_size_and_head_match_reference():
    images = _images()
    model = vit.Model(num_classes=5, pool_type="tok", rep_size=8, head_zeroinit=False, **SMALL)
    params = _random_params(model, images)
    assert params["cls"].shape == (1, 1, 16) and params["pos_embedding"].shape == (1, 16, 16)
    assert params["pre_logits"]["kernel"].shape == (16, 8) and params["head"]["kernel"].shape == (8, 5)
    logits, out = _apply(model, params, images)
    ref_pooled, ref_pre, ref_logits, ref_tokens = _np_vit(params, images, (4, 4), "tok")
    _close(out["head_input"], ref_pooled)
    _close(out["pre_logits"], ref_pre)
    _close(logits, ref_logits)
    _close(out["encoded"], ref_tokens)  # cls token first, then the 16 patch tokens
    assert out["encoded"].shape == (2, 17, 16)
    assert out["pre_logits_2d"].shape == (2, 4, 4, 8) and out["logits_2d"].shape == (2, 4, 4, 5)


def test_real_init_values():
    """The one real init: big_vision's initializers and float32 params.

    An "rbg" key compiles much faster on CPU than threefry. The properties checked do not depend on the PRNG.
    """
    images = _images()
    model = vit.Model(num_classes=3, rep_size=True, pool_type="tok", **SMALL)
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)["params"]
    flat = vit.flatten(params)
    assert {a.dtype for a in flat.values()} == {np.dtype(np.float32)}
    assert params["pre_logits"]["kernel"].shape == (16, 16)  # rep_size=True means width
    assert not np.any(params["head"]["kernel"]) and not np.any(params["cls"])  # zero inits
    mlp_bias = np.asarray(flat["Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias"])
    assert np.any(mlp_bias) and np.abs(mlp_bias).max() < 1e-5  # normal(1e-6)
    assert 0.2 < np.std(params["pos_embedding"]) < 0.3  # normal(1/sqrt(16))
    kernel = np.asarray(flat["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"])
    assert np.abs(kernel).max() <= math.sqrt(6 / (16 + 32))  # xavier_uniform bound
    logits, out = _apply(model, params, images)
    assert logits.shape == (2, 3) and not np.any(logits)
    assert out["pre_logits"].shape == (2, 16)


def test_sincos2d_posemb_matches_formula():
    h, w, width, temp = 3, 5, 16, 10_000.0
    pe = np.asarray(vit.posemb_sincos_2d(h, w, width))
    assert pe.shape == (1, h * w, width)
    q = width // 4
    for row in range(h):
        for col in range(w):
            freqs = [temp ** -(j / (q - 1)) for j in range(q)]
            expected = ([math.sin(col * f) for f in freqs] + [math.cos(col * f) for f in freqs]
                        + [math.sin(row * f) for f in freqs] + [math.cos(row * f) for f in freqs])
            np.testing.assert_allclose(pe[0, row * w + col], expected, rtol=1e-5, atol=1e-5)

    images = _images()
    model = vit.Model(posemb="sincos2d", **SMALL)
    params = _random_params(model, images)
    assert "pos_embedding" not in params
    pooled, out = _apply(model, params, images)
    fixed = np.asarray(vit.posemb_sincos_2d(4, 4, 16))
    added = np.asarray(out["with_posemb"]) - np.asarray(out["stem"]).reshape(2, 16, 16)
    _close(added, np.repeat(fixed, 2, 0))
    _close(pooled, _np_vit(params, images, (4, 4), "gap", posemb=fixed)[0])


def test_scan_matches_per_block_layout():
    images = _images()
    loop_model = vit.Model(**SMALL)
    scan_model = vit.Model(scan=True, **SMALL)
    loop_params = _random_params(loop_model, images)
    scan_params = vit.pyloop_to_scan(loop_params)

    scan_init = vit.flatten(_param_shapes(scan_model, images))
    assert "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel" in scan_init
    assert scan_init["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"].shape == (2, 16, 32)
    assert {k: v.shape for k, v in scan_init.items()} == {
        k: v.shape for k, v in vit.flatten(scan_params).items()}

    loop_out = _apply(loop_model, loop_params, images)
    scan_out = _apply(scan_model, scan_params, images)
    _close(scan_out[0], loop_out[0])
    _close(scan_out[1]["encoded"], loop_out[1]["encoded"])
    _close(scan_out[1]["encoder"]["block01"]["+mlp"], loop_out[1]["encoder"]["block01"]["+mlp"])

    back = vit.flatten(vit.scan_to_pyloop(scan_params))
    assert back.keys() == vit.flatten(loop_params).keys()
    for k, v in vit.flatten(loop_params).items():
        np.testing.assert_array_equal(back[k], v)


def test_bfloat16_matmuls_keep_float32_params():
    images = _images()
    params = _random_params(vit.Model(**SMALL), images)
    model = vit.Model(dtype_mm="bfloat16", **SMALL)
    assert {a.dtype for a in jax.tree.leaves(_param_shapes(model, images))} == {np.dtype(np.float32)}
    got, out = _apply(model, params, images)
    assert out["stem"].dtype == jax.numpy.bfloat16  # the matmuls really ran in bf16
    _close(got, _np_vit(params, images, (4, 4), "gap")[0], tol=0.1)


def test_dropout_only_in_training():
    images = _images()
    model = vit.Model(dropout=0.5, **SMALL)
    params = _random_params(model, images)
    evaluated = _apply(model, params, images)[0]
    np.testing.assert_allclose(evaluated, _np_vit(params, images, (4, 4), "gap")[0], rtol=1e-5, atol=1e-5)
    train = _apply(model, params, images, train=True, rngs={"dropout": jax.random.key(3, impl="rbg")})[0]
    assert not np.allclose(train, evaluated)


# --- Checkpoint files. ---

def test_save_load_round_trip_with_bf16_and_subtree(tmp_path):
    tree = {"img": {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                    "sub": {"b": np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)}},
            "txt": {"c": np.array([7, 8], dtype=np.int32)}}
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"stale")  # overwritten atomically
    vit.save_params(path, tree)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # no temp file left behind

    with np.load(path, allow_pickle=False) as raw:  # big_vision's on-disk convention
        assert sorted(raw.files) == ["img/a", "img/sub/b", "txt/c"]
        assert raw["img/sub/b"].dtype == np.dtype("V2")

    back = vit.load_params(path)
    assert back["img"]["sub"]["b"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back["img"]["sub"]["b"].astype(np.float32), [1.5, -2.25])
    np.testing.assert_array_equal(back["img"]["a"], tree["img"]["a"])
    assert back["txt"]["c"].dtype == np.int32

    img = vit.load_params(f"{path}:img")
    assert set(img) == {"a", "sub"}
    np.testing.assert_array_equal(vit.load_params(f"{path}:img/sub")["b"], back["img"]["sub"]["b"])
    with pytest.raises(ValueError, match="no subtree 'nope'"):
        vit.load_params(f"{path}:nope")


def test_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"payload": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"holds pickled \(object\) arrays, which litlab never loads"):
        vit.load_params(path)


def test_flatten_unflatten_round_trip():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert vit.flatten(tree) == {"a/b": 1, "a/c/d": 2, "e": 3}
    assert vit.unflatten(vit.flatten(tree)) == tree


# --- load() ---

def _write_ckpt(tmp_path, params, name="ckpt.npz"):
    path = tmp_path / name
    vit.save_params(path, params)
    return str(path)


def test_load_resamples_posemb_to_larger_grid(tmp_path):
    small = vit.Model(**SMALL)  # 16px images: 4x4 grid
    params = vit.flatten(_random_params(small, _images(size=16)))
    # Rows of the grid hold their row index in channel 0 and a constant 0.7 elsewhere.
    pe = np.full((4, 4, 16), 0.7, np.float32)
    pe[..., 0] = np.arange(4)[:, None]
    params["pos_embedding"] = pe.reshape(1, 16, 16)
    path = _write_ckpt(tmp_path, vit.unflatten(params))

    images32 = _images(size=32)  # 8x8 grid
    init = _random_params(small, images32)
    loaded = vit.load(init, path, {})
    grid = np.asarray(loaded["pos_embedding"]).reshape(8, 8, 16)
    assert loaded["pos_embedding"].shape == (1, 64, 16)
    np.testing.assert_allclose(grid[..., 1:], 0.7, rtol=1e-6)  # constant stays constant
    # Linear interpolation with corners aligned (as big_vision does it): row r lands on 3r/7.
    np.testing.assert_allclose(grid[..., 0], np.repeat((np.arange(8) * 3 / 7)[:, None], 8, 1), atol=1e-5)
    assert _apply(small, loaded, images32)[0].shape == (2, 16)


def test_load_folds_old_cls_posemb_into_cls(tmp_path):
    model = vit.Model(pool_type="tok", **SMALL)
    params = vit.flatten(_random_params(model, _images()))
    cls_pe = np.full((1, 1, 16), 0.25, np.float32)
    old = dict(params, pos_embedding=np.concatenate([cls_pe, params["pos_embedding"]], axis=1))
    path = _write_ckpt(tmp_path, vit.unflatten(old))
    loaded = vit.flatten(vit.load(_random_params(model, _images(), seed=2), path, {}))
    np.testing.assert_allclose(loaded["pos_embedding"], params["pos_embedding"])
    np.testing.assert_allclose(loaded["cls"], params["cls"] + cls_pe)


def test_dont_load_keeps_init_values(tmp_path):
    images = _images()
    ckpt = _random_params(vit.Model(num_classes=10, **SMALL), images)
    path = _write_ckpt(tmp_path, ckpt)
    init = _random_params(vit.Model(num_classes=3, **SMALL), images, seed=7)
    loaded = vit.flatten(vit.load(init, path, {}, dont_load=["head/.*", "Transformer/encoder_norm/scale"]))
    init, ckpt = vit.flatten(init), vit.flatten(ckpt)
    for name in ("head/kernel", "head/bias", "Transformer/encoder_norm/scale"):
        np.testing.assert_array_equal(loaded[name], init[name])
    for name in ("embedding/kernel", "Transformer/encoder_norm/bias",
                 "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"):
        np.testing.assert_array_equal(loaded[name], ckpt[name])
    assert loaded.keys() == init.keys()


def test_load_converts_between_scan_and_per_block(tmp_path):
    images = _images()
    loop_params = _random_params(vit.Model(**SMALL), images)
    scan_init = _random_params(vit.Model(scan=True, **SMALL), images, seed=2)
    loop_path = _write_ckpt(tmp_path, loop_params, "loop.npz")

    as_scan = vit.load(scan_init, loop_path, {"scan": True})
    expected = vit.flatten(vit.pyloop_to_scan(loop_params))
    got = vit.flatten(as_scan)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])

    scan_path = _write_ckpt(tmp_path, as_scan, "scan.npz")
    back = vit.flatten(vit.load(loop_params, scan_path, {"scan": False}))
    for k, v in vit.flatten(loop_params).items():
        np.testing.assert_array_equal(back[k], v)


def test_load_missing_key_error(tmp_path):
    images = _images()
    path = _write_ckpt(tmp_path, _random_params(vit.Model(**SMALL), images))
    with pytest.raises(ValueError) as err:
        vit.load(_random_params(vit.Model(num_classes=4, **SMALL), images), path, {})
    msg = str(err.value)
    assert "missing from the checkpoint" in msg and "head/kernel (expected shape (16, 4))" in msg
    assert "dont_load" in msg and "model config" in msg


def test_load_extra_key_error(tmp_path):
    images = _images()
    path = _write_ckpt(tmp_path, _random_params(vit.Model(num_classes=4, **SMALL), images))
    with pytest.raises(ValueError) as err:
        vit.load(_random_params(vit.Model(**SMALL), images), path, {})
    msg = str(err.value)
    assert "unknown to the model" in msg and "head/kernel (found shape (16, 4))" in msg
    assert "dont_load" in msg and "num_classes" in msg


def test_load_shape_mismatch_error(tmp_path):
    images = _images()
    path = _write_ckpt(tmp_path, _random_params(vit.Model(**SMALL), images))
    with pytest.raises(ValueError) as err:
        vit.load(_random_params(vit.Model(**dict(SMALL, mlp_dim=48)), images), path, {})
    msg = str(err.value)
    assert ("Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel: expected shape (16, 48), "
            "found shape (16, 32)") in msg
    assert "dont_load" in msg and "mlp_dim" in msg
