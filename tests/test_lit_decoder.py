"""LiT-decoder: image vs cached-feature inputs, shape contract, frozen/partially frozen training, loading."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from litlab import freeze
from litlab.models import decoder, lit_decoder, vit

B, IMG, VOCAB, SEQ = 2, 16, 37, 10
ENC = dict(patch_size=(8, 8), width=16, depth=2, mlp_dim=32, num_heads=2, pool_type="gap")
DEC = dict(vocab_size=VOCAB, width=16, depth=1, num_heads=2, mlp_dim=24, max_len=16,
           conditioning="cross")
N_TOKENS = (IMG // 8) ** 2
PREFIX_LEN = np.array([3, 5])


def _model(encoder_trainable=False):
    return lit_decoder.Model(encoder_cfg=ENC, decoder_cfg=DEC, image_size=(IMG, IMG),
                             encoder_trainable=encoder_trainable)


def _batch():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, (B, IMG, IMG, 3)).astype(np.float32)
    tokens = rng.integers(1, VOCAB, (B, SEQ + 1), dtype=np.int32)
    tokens[1, -2:] = 0  # right padding
    positions = np.arange(SEQ)[None]
    loss_mask = (positions >= PREFIX_LEN[:, None] - 1) & (tokens[:, 1:] != 0)
    return dict(images=images, tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(loss_mask, jnp.float32))


@functools.cache
def _params():
    """Random values (not init) in the model's `params` tree: nonzero biases, no init compile."""
    b = _batch()
    shapes = jax.eval_shape(_model().init, jax.random.PRNGKey(0), b["tokens"][:, :-1], PREFIX_LEN,
                            images=b["images"])["params"]
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(s.dtype)), shapes)


def test_param_tree_is_img_plus_decoder():
    params = _params()
    assert set(params) == {"img", "decoder"}
    assert {"embedding", "pos_embedding", "Transformer"} <= set(params["img"])
    assert "img_proj" in params["decoder"]


def test_images_and_cached_image_tokens_give_identical_logits():
    model, params, b = _model(), _params(), _batch()
    variables, tokens = {"params": params}, b["tokens"][:, :-1]
    # The feature cache: image tokens from a separately compiled `encode`.
    image_tokens = jax.jit(functools.partial(model.apply, method=model.encode))(variables, b["images"])
    assert image_tokens.shape == (B, N_TOKENS, ENC["width"])

    @jax.jit
    def both_ways(images, image_tokens):
        apply = functools.partial(model.apply, variables)
        prefill = functools.partial(apply, method=model.prefill)
        block = tokens[:, :int(PREFIX_LEN.max())]
        from_images = (apply(tokens, PREFIX_LEN, images=images),
                       prefill(block, PREFIX_LEN, images=images))
        from_tokens = (apply(tokens, PREFIX_LEN, image_tokens=image_tokens),
                       prefill(block, PREFIX_LEN, image_tokens=image_tokens))
        (_, cache) = from_images[1]
        step = apply(cache, tokens[np.arange(B), PREFIX_LEN], method=model.extend)
        return from_images, from_tokens, step

    from_images, from_tokens, (step_logits, cache) = both_ways(b["images"], image_tokens)
    jax.tree.map(np.testing.assert_array_equal, from_images, from_tokens)
    logits, (prefill_logits, _) = from_images
    assert logits.shape == (B, SEQ, VOCAB)
    # The incremental entry points agree with teacher forcing.
    np.testing.assert_allclose(prefill_logits, logits[np.arange(B), PREFIX_LEN - 1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(step_logits, logits[np.arange(B), PREFIX_LEN], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache["pos"], PREFIX_LEN + 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "exactly one of images= or image_tokens="),
    (dict(images=jnp.zeros((B, IMG, IMG, 3)), image_tokens=jnp.zeros((B, N_TOKENS, 16))),
     "exactly one of"),
    (dict(image_tokens=jnp.zeros((B, N_TOKENS + 1, 16))), rf"\[B, {N_TOKENS}, 16\]"),
    (dict(image_tokens=jnp.zeros((B, N_TOKENS, 8))), rf"\[B, {N_TOKENS}, 16\].*got \(2, 4, 8\)"),
    (dict(image_tokens=jnp.zeros((N_TOKENS, 16))), "image_tokens must be"),
    (dict(images=jnp.zeros((B, 2 * IMG, IMG, 3))), "image_size"),
    (dict(images=jnp.zeros((B, IMG, IMG))), "images must be"),
    (dict(image_tokens=jnp.zeros((B + 1, N_TOKENS, 16))), "batch size mismatch"),
])
def test_shape_contract_errors(kwargs, match):
    tokens = jnp.ones((B, SEQ), jnp.int32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(functools.partial(_model().apply, **kwargs), {"params": _params()},
                       tokens, PREFIX_LEN)


def _train(model, steps=2):
    """A jitted AdamW train step with the masked optimizer; returns params, opt state, last grads."""
    params, b = _params(), _batch()
    tx = freeze.masked_optimizer(optax.adamw(1e-2, weight_decay=0.1), params,
                                 freeze.frozen_patterns(model.encoder_trainable))

    def loss_fn(p):
        logits = model.apply({"params": p}, b["tokens"][:, :-1], PREFIX_LEN, images=b["images"],
                             train=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, b["tokens"][:, 1:])
        return jnp.sum(ce * b["loss_mask"]) / jnp.sum(b["loss_mask"])

    @jax.jit
    def step(p, opt_state):
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, grads

    opt_state = tx.init(params)
    new = params
    for _ in range(steps):
        new, opt_state, grads = step(new, opt_state)
    return params, new, opt_state, grads


def _changed(old, new):
    """{name: bool} whether each parameter changed at all (bitwise)."""
    names = freeze.param_names(old)
    flags = jax.tree.map(lambda a, b: not np.array_equal(a, b), old, new)
    return dict(zip(jax.tree.leaves(names), jax.tree.leaves(flags)))


def _state_sizes(opt_state):
    """Total elements of all non-scalar optimizer-state arrays."""
    return sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim)


def test_frozen_encoder_training_step():
    old, new, opt_state, grads = _train(_model())
    changed = _changed(old, new)
    assert all(not c for n, c in changed.items() if n.startswith("img/"))
    assert all(c for n, c in changed.items() if n.startswith("decoder/"))
    # stop_gradient: no gradient reaches the encoder at all.
    assert all(not np.any(g) for g in jax.tree.leaves(grads["img"]))
    # AdamW's two moments cover exactly the decoder; frozen params hold no state.
    n_decoder = sum(x.size for x in jax.tree.leaves(old["decoder"]))
    assert _state_sizes(opt_state) == 2 * n_decoder
    state_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
    assert state_paths and not any("'img'" in p for p in state_paths)


def test_finetune_from_block_n_freezes_exactly_stem_and_lower_blocks():
    params = _params()
    mask = freeze.frozen_mask(params, freeze.frozen_patterns(1))
    names = dict(zip(jax.tree.leaves(freeze.param_names(params)), jax.tree.leaves(mask)))
    expected = {n for n in names
                if n.startswith(("img/embedding/", "img/Transformer/encoderblock_0/"))
                or n == "img/pos_embedding"}
    assert {n for n, frozen in names.items() if frozen} == expected
    assert len(expected) > 10

    old, new, opt_state, grads = _train(_model(encoder_trainable=1))
    changed = _changed(old, new)
    assert {n for n, c in changed.items() if not c} == expected
    assert np.any(grads["img"]["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"])
    n_trainable = sum(np.size(x) for n, x in zip(names, jax.tree.leaves(params)) if not names[n])
    assert _state_sizes(opt_state) == 2 * n_trainable


def test_frozen_patterns():
    assert freeze.frozen_patterns(False) == ["^img/"]
    assert freeze.frozen_patterns(True) == []
    params = _params()
    n_all = sum(x.size for x in jax.tree.leaves(params))
    # Everything trainable: the optimizer state covers every parameter.
    tx = freeze.masked_optimizer(optax.adam(1e-3), params, freeze.frozen_patterns(True))
    assert _state_sizes(tx.init(params)) == 2 * n_all
    # Freezing from a block beyond the depth freezes all blocks; encoder_norm still trains.
    mask = freeze.frozen_mask(params, freeze.frozen_patterns(5))
    assert not mask["img"]["Transformer"]["encoder_norm"]["scale"]
    assert all(jax.tree.leaves(mask["img"]["Transformer"]["encoderblock_1"]))
    with pytest.raises(ValueError, match="encoder_trainable"):
        freeze.frozen_patterns(-1)


def test_pattern_matching_nothing_is_an_error():
    params = _params()
    with pytest.raises(ValueError, match=r"\^img/Transformer/encoderblok_0/"):
        freeze.frozen_mask(params, ["^img/embedding/", "^img/Transformer/encoderblok_0/"])
    with pytest.raises(ValueError, match="match no parameter"):
        freeze.masked_optimizer(optax.sgd(0.1), params, ["^image/"])


def test_load_encoder_checkpoint(tmp_path):
    params = _params()
    rng = np.random.default_rng(5)
    ckpt = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params["img"])
    path = tmp_path / "vit.npz"
    vit.save_params(path, ckpt)
    loaded = lit_decoder.load(params, path, ENC)
    jax.tree.map(np.testing.assert_array_equal, loaded["img"], ckpt)
    assert loaded["decoder"] is params["decoder"]
    kept = lit_decoder.load(params, path, ENC, dont_load=["pos_embedding"])
    np.testing.assert_array_equal(kept["img"]["pos_embedding"], params["img"]["pos_embedding"])


def test_question_tokens_pass_through_to_the_decoder():
    """With question memory on, __call__ and prefill hand question_tokens to the decoder unchanged."""
    dec = {**DEC, "question_len": 6}
    model = lit_decoder.Model(encoder_cfg=ENC, decoder_cfg=dec, image_size=(IMG, IMG))
    b = _batch()
    tokens = b["tokens"][:, :-1]
    question = jnp.asarray([[5, 6, 7, 0], [8, 0, 0, 0]], jnp.int32)
    rng = np.random.default_rng(2)
    image_tokens = jnp.asarray(rng.normal(size=(B, N_TOKENS, ENC["width"])).astype(np.float32))
    shapes = jax.eval_shape(functools.partial(model.init, question_tokens=question),
                            jax.random.PRNGKey(0), tokens, PREFIX_LEN, images=b["images"])["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(s.dtype)), shapes)
    assert params["decoder"]["question_pos_embedding"].shape == (6, DEC["width"])

    @jax.jit
    def run(params, question):
        apply = functools.partial(model.apply, {"params": params}, image_tokens=image_tokens,
                                  question_tokens=question)
        direct = decoder.Model(**dec).apply({"params": params["decoder"]}, image_tokens, tokens,
                                            PREFIX_LEN, question_tokens=question)
        block = tokens[:, :int(PREFIX_LEN.max())]
        return apply(tokens, PREFIX_LEN), direct, apply(block, PREFIX_LEN, method=model.prefill)

    logits, direct, (prefill_logits, cache) = run(params, question)
    np.testing.assert_array_equal(logits, direct)
    np.testing.assert_allclose(prefill_logits, logits[np.arange(B), PREFIX_LEN - 1], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache["mem_mask"][:, N_TOKENS:], question != 0)
    other, _, _ = run(params, question.at[:, 0].set(9))
    assert np.abs(np.asarray(other) - np.asarray(logits)).max() > 1e-4
    with pytest.raises(ValueError, match="question_len=6: pass question_tokens"):
        jax.eval_shape(functools.partial(model.apply, image_tokens=image_tokens), {"params": params},
                       tokens, PREFIX_LEN)
