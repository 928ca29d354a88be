"""Decoder: teacher forcing vs KV-cached decoding, attention masks, cache API, parameter counts,
question memory and the text-only arm."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from litlab.models import decoder

B, N, D_ENC, VOCAB, MAX_LEN = 3, 5, 12, 37, 16
SEQ = 12                               # teacher-forced input length (tokens[:, :-1])
PREFIX_LEN = np.array([3, 6, 2])       # BOS + prompt + SEP, different per example
STEPS = SEQ - int(PREFIX_LEN.max())    # decode steps after prefill; one value, so one compile
# Dropout is on, so every eval/cached comparison also checks that it is off outside training.
CFG = dict(vocab_size=VOCAB, width=16, depth=2, num_heads=2, mlp_dim=24, max_len=MAX_LEN, dropout=0.2)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    image_tokens = jnp.asarray(rng.normal(size=(B, N, D_ENC)).astype(np.float32))
    return image_tokens, rng.integers(1, VOCAB, (B, SEQ), dtype=np.int32)


def _prompt_block(tokens, lengths):
    """Right-padded prompt block; the padding is junk (not PAD) to prove it is ignored."""
    t = int(lengths.max())
    junk = np.arange(1, t + 1)[None] % (VOCAB - 1) + 1
    return jnp.asarray(np.where(np.arange(t)[None] < lengths[:, None], tokens[:, :t], junk))


def _random_params(model, seed=1, inputs=None, **kw):
    """Random values in the model's param tree, instead of its init.

    Every bias and LayerNorm offset is then nonzero, so the tests exercise
    them, and no init has to be compiled. `inputs` (default `_inputs()`) set the
    shapes; `kw` go to init (question_tokens=).
    """
    image_tokens, tokens = inputs or _inputs()
    shapes = jax.eval_shape(functools.partial(model.init, **kw), jax.random.PRNGKey(0),
                            image_tokens, tokens, PREFIX_LEN)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(s.dtype)), shapes)


class Harness:
    """One model with jitted forward / prefill / extend, compiled once per conditioning."""

    def __init__(self, conditioning, cfg=CFG, **init_kw):
        self.model = decoder.Model(**cfg, conditioning=conditioning)
        self.params = _random_params(self.model, **init_kw)
        self.forward = jax.jit(self.model.apply)
        self.prefill = jax.jit(functools.partial(self.model.apply, method=self.model.prefill))
        self.extend = jax.jit(functools.partial(self.model.apply, method=self.model.extend))

    def decode(self, image_tokens, tokens, lengths, step_params=None, **kw):
        """Prefill the prompts, then feed the teacher tokens one by one with `extend`.

        Returns logits [B, STEPS + 1, V] (row s predicts the token at lengths + s)
        and the final cache. `step_params` (default: the params) go to `extend` only;
        `kw` (question_tokens=) go to `prefill`.
        """
        logits, cache = self.prefill(self.params, image_tokens, _prompt_block(tokens, lengths),
                                     lengths, **kw)
        out = [logits]
        for s in range(STEPS):
            token = tokens[np.arange(len(lengths)), lengths + s]
            logits, cache = self.extend(step_params or self.params, cache, token)
            out.append(logits)
        return jnp.stack(out, axis=1), cache


@functools.cache
def _harness(conditioning):
    return Harness(conditioning)


@pytest.fixture(params=decoder.CONDITIONINGS)
def harness(request):
    return _harness(request.param)


def _teacher_rows(logits, lengths, steps):
    """Teacher-forced logits at positions lengths-1 .. lengths-1+steps, as [B, steps+1, V]."""
    idx = lengths[:, None] - 1 + np.arange(steps + 1)[None]
    return np.take_along_axis(np.asarray(logits), idx[:, :, None], axis=1)


def test_cached_decoding_matches_teacher_forcing(harness):
    image_tokens, tokens = _inputs()
    full = harness.forward(harness.params, image_tokens, tokens, PREFIX_LEN)
    assert full.shape == (B, SEQ, VOCAB) and full.dtype == jnp.float32
    cached, cache = harness.decode(image_tokens, tokens, PREFIX_LEN)
    np.testing.assert_allclose(cached, _teacher_rows(full, PREFIX_LEN, STEPS), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache["pos"], PREFIX_LEN + STEPS)


def test_cache_layout_and_beam_reorder(harness):
    image_tokens, tokens = _inputs()
    _, cache = harness.decode(image_tokens, tokens, PREFIX_LEN)
    h, dh = CFG["num_heads"], CFG["width"] // CFG["num_heads"]
    m = 1 if harness.model.conditioning == "pooled" else N
    assert len(cache["layers"]) == CFG["depth"]
    for layer in cache["layers"]:
        assert layer["k"].shape == layer["v"].shape == (B, h, MAX_LEN, dh)
        assert layer["mk"].shape == layer["mv"].shape == (B, h, m, dh)
    assert all(x.shape[0] == B for x in jax.tree.leaves(cache))
    assert cache["pos"].dtype == jnp.int32
    # extend returns a cache of identical structure, shapes and dtypes: a valid while_loop carry.
    _, after = jax.eval_shape(harness.extend, harness.params, cache, tokens[:, 0])
    assert jax.tree.structure(after) == jax.tree.structure(cache)
    assert all(a.shape == c.shape and a.dtype == c.dtype
               for a, c in zip(jax.tree.leaves(after), jax.tree.leaves(cache)))
    # A beam search reorders the cache along its batch axis; decoding then follows the rows.
    order = np.array([2, 0, 0])
    token = tokens[:, 0]
    ref, _ = harness.extend(harness.params, cache, token)
    moved, _ = harness.extend(harness.params, jax.tree.map(lambda x: x[order], cache), token[order])
    np.testing.assert_array_equal(moved, np.asarray(ref)[order])


def test_causality(harness):
    image_tokens, tokens = _inputs()
    j = int(PREFIX_LEN.max()) + 2  # a target position in every example
    changed = tokens.copy()
    changed[:, j] = changed[:, j] % (VOCAB - 1) + 1
    a = harness.forward(harness.params, image_tokens, tokens, PREFIX_LEN)
    b = harness.forward(harness.params, image_tokens, changed, PREFIX_LEN)
    np.testing.assert_allclose(a[:, :j], b[:, :j], atol=1e-6, rtol=0)
    assert np.all(np.abs(a[:, j:] - b[:, j:]).max(axis=-1) > 1e-4)


def test_prefix_lm_mask(harness):
    image_tokens, tokens = _inputs()
    prefix = harness.model.conditioning == "prefix"
    fwd = functools.partial(harness.forward, harness.params, image_tokens)
    base = np.asarray(fwd(tokens, PREFIX_LEN))
    rows = np.arange(B)

    # A later prompt token changes earlier prompt-position logits only in the prefix-LM.
    later = PREFIX_LEN - 1  # the last prefix token (SEP)
    changed = tokens.copy()
    changed[rows, later] = changed[rows, later] % (VOCAB - 1) + 1
    diff = np.abs(base - np.asarray(fwd(changed, PREFIX_LEN))).max(axis=-1)
    for b in range(B):
        assert (diff[b, :later[b]].min() > 1e-4) if prefix else (diff[b, :later[b]].max() <= 1e-6)

    # No prompt position sees a target token, in any conditioning.
    changed = tokens.copy()
    changed[rows, PREFIX_LEN] = changed[rows, PREFIX_LEN] % (VOCAB - 1) + 1
    diff = np.abs(base - np.asarray(fwd(changed, PREFIX_LEN))).max(axis=-1)
    for b in range(B):
        assert diff[b, :PREFIX_LEN[b]].max() <= 1e-6

    # prefix_len is what moves the boundary (and only matters for the prefix-LM).
    moved = np.asarray(fwd(tokens, PREFIX_LEN + 1))
    assert (np.abs(moved - base).max() > 1e-4) == prefix


def test_step_never_reads_image_or_projections(harness):
    """extend takes no image, and the image projection and cross-attention K/V weights can be
    NaN while it runs: image K/V come from the cache, computed once in prefill."""
    image_tokens, tokens = _inputs()
    image_only = r"img_proj/|/xa/(key|value)/"
    poisoned = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, jnp.nan)
        if re.search(image_only, jax.tree_util.keystr(path, simple=True, separator="/")) else x,
        harness.params)
    assert np.isnan(poisoned["params"]["img_proj"]["kernel"]).all()
    ref, _ = harness.decode(image_tokens, tokens, PREFIX_LEN)
    out, _ = harness.decode(image_tokens, tokens, PREFIX_LEN, step_params=poisoned)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("case", ["folded", "question", "wide_encoder"])
def test_cached_image_keys_and_values_are_those_of_the_projected_image_tokens(case):
    """'cross' folds the image projection into each layer's K/V maps (not when the encoder is
    wider than the decoder); the cached image K/V must equal key/value(img_proj(tokens))
    computed the long way, with any question memory after them."""
    question = case == "question"
    h = {"folded": lambda: _harness("cross"), "wide_encoder": lambda: Harness("cross", {**CFG, "width": D_ENC - 4}),
         "question": lambda: Harness("cross", {**CFG, "question_len": 4}, question_tokens=jnp.ones((B, 4), jnp.int32))}[case]()
    image_tokens, tokens = _inputs()
    kw = {"question_tokens": jnp.asarray(np.array([[5, 6, 0, 0], [7, 0, 0, 0], [8, 9, 10, 11]]))} if question else {}
    _, cache = h.prefill(h.params, image_tokens, _prompt_block(tokens, PREFIX_LEN), PREFIX_LEN, **kw)
    p = h.params["params"]
    mem = image_tokens @ p["img_proj"]["kernel"] + p["img_proj"]["bias"]
    for i, layer in enumerate(cache["layers"]):
        for name, key in (("key", "mk"), ("value", "mv")):
            w = p[f"blocks_{i}"]["xa"][name]
            want = jnp.einsum("bmw,whd->bhmd", mem, w["kernel"]) + w["bias"][:, None]
            np.testing.assert_allclose(layer[key][:, :, :N], want, rtol=1e-5, atol=1e-5)
            assert layer[key].shape[2] == N + (4 if question else 0)


def test_examples_are_independent(harness):
    image_tokens, tokens = _inputs()
    batched, _ = harness.decode(image_tokens, tokens, PREFIX_LEN)
    # Example 1 alone (batch of one) ...
    alone, _ = harness.decode(image_tokens[1:2], tokens[1:2], PREFIX_LEN[1:2])
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-6, rtol=0)
    # ... and next to entirely different neighbours (other images, prompts and lengths).
    other_img, other_tok = _inputs(seed=7)
    other_img = other_img.at[1].set(image_tokens[1])
    other_tok[1] = tokens[1]
    lengths = np.array([5, PREFIX_LEN[1], 1])
    mixed, _ = harness.decode(other_img, other_tok, lengths)
    np.testing.assert_allclose(mixed[1], batched[1], atol=1e-6, rtol=0)


def _expected_count(vocab_size, width, depth, mlp_dim, max_len, d_enc, conditioning, tie):
    def dense(i, o):
        return i * o + o

    attention = 4 * dense(width, width)
    layer_norm = 2 * width
    block = layer_norm + attention + layer_norm + dense(width, mlp_dim) + dense(mlp_dim, width)
    if conditioning != "prefix":
        block += layer_norm + attention
    count = vocab_size * width + max_len * width + dense(d_enc, width) + depth * block + layer_norm
    return count + (0 if tie else dense(width, vocab_size))


@pytest.mark.parametrize("conditioning", decoder.CONDITIONINGS)
@pytest.mark.parametrize("cfg", [
    dict(vocab_size=1000, width=256, depth=2, num_heads=4, mlp_dim=1024, max_len=64, tie=False),
    dict(vocab_size=32000, width=384, depth=6, num_heads=6, mlp_dim=1536, max_len=32, tie=True),
    dict(vocab_size=500, width=64, depth=1, num_heads=1, mlp_dim=None, max_len=8, tie=False),
])
def test_parameter_count(conditioning, cfg):
    cfg = dict(cfg)
    tie = cfg.pop("tie")
    d_enc = 768
    model = decoder.Model(**cfg, tie_embeddings=tie, conditioning=conditioning)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4, d_enc)),
                            jnp.zeros((1, 8), jnp.int32), jnp.ones((1,), jnp.int32))
    count = sum(x.size for x in jax.tree.leaves(shapes))
    mlp_dim = cfg["mlp_dim"] or 4 * cfg["width"]
    assert count == _expected_count(cfg["vocab_size"], cfg["width"], cfg["depth"], mlp_dim,
                                    cfg["max_len"], d_enc, conditioning, tie)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))


def test_bfloat16_matmuls_keep_float32_params_and_logits():
    h32 = _harness("prefix")
    model = decoder.Model(**CFG, conditioning="prefix", dtype_mm="bfloat16")
    image_tokens, tokens = _inputs()
    l32 = h32.forward(h32.params, image_tokens, tokens, PREFIX_LEN)
    l16 = jax.jit(model.apply)(h32.params, image_tokens, tokens, PREFIX_LEN)
    assert l16.dtype == jnp.float32
    assert 0 < np.abs(l16 - l32).max() < 0.1
    prefill = functools.partial(model.apply, method=model.prefill)
    logits, cache = jax.eval_shape(prefill, h32.params, image_tokens,
                                   _prompt_block(tokens, PREFIX_LEN), PREFIX_LEN)
    assert logits.dtype == jnp.float32
    # bfloat16 on accelerators; float32 on CPU, which would convert a bfloat16 cache every token.
    want = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    assert all(x.dtype == want for layer in cache["layers"] for x in layer.values())


def test_dropout_only_in_training():
    h = _harness("cross")
    image_tokens, tokens = _inputs()
    ref = h.forward(h.params, image_tokens, tokens, PREFIX_LEN)
    train = jax.jit(functools.partial(h.model.apply, train=True))
    # rbg keys: the threefry dropout RNG takes seconds longer to compile on CPU.
    a, b, c = (train(h.params, image_tokens, tokens, PREFIX_LEN,
                     rngs={"dropout": jax.random.key(k, impl="rbg")}) for k in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - ref).max() > 1e-3


@pytest.mark.parametrize("bad, match", [
    (dict(conditioning="film"), "conditioning"),
    (dict(num_heads=3), "divisible"),
    (dict(max_len=8), "max_len"),
    (dict(image_posemb="rope"), "image_posemb"),
])
def test_config_errors(bad, match):
    image_tokens, tokens = _inputs()
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(decoder.Model(**{**CFG, **bad}).init, jax.random.PRNGKey(0),
                       image_tokens, tokens, PREFIX_LEN)


# Question memory (question_len > 0): the question is embedded and appended to the image memory.
Q_LEN = 10
Q_CFG = dict(vocab_size=VOCAB, width=32, depth=1, num_heads=2, mlp_dim=32, max_len=MAX_LEN,
             dropout=0.2, question_len=Q_LEN)
QUESTION_LENGTHS = np.array([4, 6, 2])  # real tokens per example, then pad id 0


def _questions(seed=3, width=6):
    """Questions [B, width], right-padded with 0 after QUESTION_LENGTHS real tokens (ids >= 1)."""
    q = np.random.default_rng(seed).integers(1, VOCAB, (B, width)).astype(np.int32)
    return np.where(np.arange(width)[None] < QUESTION_LENGTHS[:, None], q, 0)


def _widen(q, width=Q_LEN):
    return np.pad(q, ((0, 0), (0, width - q.shape[1])))


@functools.cache
def _q_harness(conditioning):
    return Harness(conditioning, Q_CFG, question_tokens=_questions())


@pytest.fixture(params=decoder.CONDITIONINGS)
def q_harness(request):
    return _q_harness(request.param)


def test_question_memory_cached_decoding_matches_teacher_forcing_and_ignores_padding(q_harness):
    h, (image_tokens, tokens), q = q_harness, _inputs(), _questions()
    full = np.asarray(h.forward(h.params, image_tokens, tokens, PREFIX_LEN, question_tokens=q))
    # Extra padding (Q = 6 -> 10) changes nothing, in teacher forcing ...
    wide = h.forward(h.params, image_tokens, tokens, PREFIX_LEN, question_tokens=_widen(q))
    np.testing.assert_allclose(wide, full, atol=1e-5, rtol=0)
    # ... nor in prefill + extend, which read the memory mask from the cache.
    cached, cache = h.decode(image_tokens, tokens, PREFIX_LEN, question_tokens=_widen(q))
    np.testing.assert_allclose(cached, _teacher_rows(full, PREFIX_LEN, STEPS), atol=1e-5, rtol=0)
    # Cache layout: image slots, then question slots; mem_mask hides exactly the padding.
    m = 1 if h.model.conditioning == "pooled" else N
    heads, dh = Q_CFG["num_heads"], Q_CFG["width"] // Q_CFG["num_heads"]
    assert set(cache) == {"pos", "layers", "mem_mask"} and cache["mem_mask"].dtype == jnp.bool_
    want = np.concatenate([np.ones((B, m), bool), _widen(q) != 0], axis=1)
    np.testing.assert_array_equal(cache["mem_mask"], want)
    for layer in cache["layers"]:
        assert layer["mk"].shape == layer["mv"].shape == (B, heads, m + Q_LEN, dh)
    assert all(x.shape[0] == B for x in jax.tree.leaves(cache))
    # A beam search reorders every leaf, the mask included; decoding follows the rows.
    order = np.array([2, 0, 0])
    ref, _ = h.extend(h.params, cache, tokens[:, 0])
    moved, after = h.extend(h.params, jax.tree.map(lambda x: x[order], cache), tokens[order, 0])
    np.testing.assert_allclose(moved, np.asarray(ref)[order], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(after["mem_mask"], want[order])


def test_question_influences_every_position(q_harness):
    h, (image_tokens, tokens), q = q_harness, _inputs(), _questions()
    a = np.asarray(h.forward(h.params, image_tokens, tokens, PREFIX_LEN, question_tokens=q))
    # Another question of the same lengths; and the same one with only its last real token changed.
    other = _questions(seed=4)
    last = q.copy()
    rows = np.arange(B)
    last[rows, QUESTION_LENGTHS - 1] = last[rows, QUESTION_LENGTHS - 1] % (VOCAB - 1) + 1
    for changed in (other, last):
        b = np.asarray(h.forward(h.params, image_tokens, tokens, PREFIX_LEN, question_tokens=changed))
        assert np.abs(a - b).max(axis=-1).min() > 1e-4


@pytest.mark.parametrize("conditioning", decoder.CONDITIONINGS)
def test_text_only_arm_ignores_the_image(conditioning):
    h, (image_tokens, tokens), q = _q_harness(conditioning), _inputs(), _questions()
    text_only = decoder.Model(**Q_CFG, conditioning=conditioning, image_input=False)
    # Same param tree: one checkpoint serves both arms.
    shapes = jax.eval_shape(functools.partial(text_only.init, question_tokens=q),
                            jax.random.PRNGKey(0), image_tokens, tokens, PREFIX_LEN)
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, h.params)
    forward = jax.jit(text_only.apply)
    other_images, _ = _inputs(seed=7)
    a = forward(h.params, image_tokens, tokens, PREFIX_LEN, question_tokens=q)
    b = forward(h.params, other_images * 3.0, tokens, PREFIX_LEN, question_tokens=q)
    np.testing.assert_array_equal(a, b)
    # It is the image model seeing all-zero image tokens (which does depend on the image).
    zeros = h.forward(h.params, jnp.zeros_like(image_tokens), tokens, PREFIX_LEN, question_tokens=q)
    with_image = h.forward(h.params, image_tokens, tokens, PREFIX_LEN, question_tokens=q)
    np.testing.assert_allclose(a, zeros, atol=1e-6, rtol=0)
    assert np.abs(np.asarray(with_image) - np.asarray(a)).max() > 1e-3


def _param_shapes(**cfg):
    image_tokens, tokens = _inputs()
    model = decoder.Model(**{**CFG, **cfg})
    kw = {"question_tokens": _questions()} if cfg.get("question_len") else {}
    shapes = jax.eval_shape(functools.partial(model.init, **kw), jax.random.PRNGKey(0),
                            image_tokens, tokens, PREFIX_LEN)
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x.shape
            for p, x in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]}


@pytest.mark.parametrize("conditioning", decoder.CONDITIONINGS)
def test_question_len_zero_keeps_the_param_tree_and_cache(conditioning):
    before = _param_shapes(conditioning=conditioning)
    top = {"img_proj", "embed", "pos_embedding", "ln_out"} | {f"blocks_{i}" for i in range(CFG["depth"])}
    assert {k.split("/")[0] for k in before} == top
    assert _param_shapes(conditioning=conditioning, question_len=0, image_input=False) == before
    # The question memory adds exactly its position embedding and LayerNorm.
    with_q = _param_shapes(conditioning=conditioning, question_len=Q_LEN)
    w = CFG["width"]
    assert with_q == {**before, "question_pos_embedding": (Q_LEN, w),
                      "question_ln/scale": (w,), "question_ln/bias": (w,)}
    # Without question memory the cache holds no mask: {"pos", "layers"} as before.
    h, (image_tokens, tokens) = _harness(conditioning), _inputs()
    _, cache = jax.eval_shape(h.prefill, h.params, image_tokens,
                              _prompt_block(tokens, PREFIX_LEN), PREFIX_LEN)
    assert set(cache) == {"pos", "layers"}


def test_question_errors():
    image_tokens, tokens = _inputs()
    q = _questions()
    block = _prompt_block(tokens, PREFIX_LEN)
    plain, with_q = decoder.Model(**CFG), decoder.Model(**Q_CFG)
    p_plain = jax.eval_shape(plain.init, jax.random.PRNGKey(0), image_tokens, tokens, PREFIX_LEN)
    p_q = _q_harness("cross").params

    def check(model, params, match, *args, method=None, **kw):
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(functools.partial(model.apply, method=method, **kw), params, *args)

    for method, args in ((None, (image_tokens, tokens, PREFIX_LEN)),
                         ("prefill", (image_tokens, block, PREFIX_LEN))):
        check(plain, p_plain, "question_tokens were passed but this decoder has question_len=0",
              *args, method=method, question_tokens=q)
        check(with_q, p_q, f"question_len={Q_LEN}: pass question_tokens", *args, method=method)
        check(with_q, p_q, rf"Q <= question_len={Q_LEN}, got shape \(3, 11\)", *args,
              method=method, question_tokens=_widen(q, Q_LEN + 1))
        check(with_q, p_q, r"\[B=3, Q\]", *args, method=method, question_tokens=q[:2])
        check(with_q, p_q, "integer token ids", *args, method=method,
              question_tokens=q.astype(np.float32))
    # A cache without the memory mask (or with one, for a plain decoder) is refused by extend.
    _, cache = jax.eval_shape(functools.partial(plain.apply, method="prefill"), p_plain,
                              image_tokens, block, PREFIX_LEN)
    check(with_q, p_q, "lacks a question memory mask", cache, tokens[:, 0], method="extend")
    _, cache = jax.eval_shape(functools.partial(with_q.apply, method="prefill", question_tokens=q),
                              p_q, image_tokens, block, PREFIX_LEN)
    check(plain, p_plain, "has a question memory mask", cache, tokens[:, 0], method="extend")
    with pytest.raises(ValueError, match="question_len must be >= 0"):
        jax.eval_shape(decoder.Model(**{**CFG, "question_len": -1}).init, jax.random.PRNGKey(0),
                       image_tokens, tokens, PREFIX_LEN)


# Image position codes (image_posemb): the decoder sees where each image token sits.
GRID = 3  # a 3x3 grid of image tokens; sincos2d needs a square one


def _grid_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(B, GRID * GRID, D_ENC)).astype(np.float32)), _inputs()[1]


def _posemb_model(conditioning, image_posemb, seed=1):
    model = decoder.Model(**CFG, conditioning=conditioning, image_posemb=image_posemb)
    return model, _random_params(model, seed, inputs=_grid_inputs())


@pytest.mark.parametrize("conditioning", ["cross", "prefix"])
def test_image_posemb_lets_the_decoder_see_token_order(conditioning):
    image_tokens, tokens = _grid_inputs()
    shuffled = image_tokens[:, np.random.default_rng(5).permutation(GRID * GRID)]
    for kind in decoder.IMAGE_POSEMBS:
        model, params = _posemb_model(conditioning, kind)
        a, b = (model.apply(params, x, tokens, PREFIX_LEN) for x in (image_tokens, shuffled))
        if kind == "none":  # attention over image tokens is blind to their order
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        else:
            assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3, kind


def test_sincos2d_image_posemb_is_the_vit_code_added_to_the_tokens():
    from litlab.models import vit
    image_tokens, tokens = _grid_inputs()
    model, params = _posemb_model("cross", "sincos2d")
    plain = decoder.Model(**CFG, conditioning="cross")
    code = vit.posemb_sincos_2d(GRID, GRID, D_ENC)
    np.testing.assert_allclose(model.apply(params, image_tokens, tokens, PREFIX_LEN),
                               plain.apply(params, image_tokens + code, tokens, PREFIX_LEN), atol=1e-5, rtol=0)
    fixed = jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, _posemb_model("cross", "none")[1])
    assert fixed  # no parameters
    with pytest.raises(ValueError, match="square grid"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), *_inputs(), PREFIX_LEN)  # N = 5


def test_learned_image_posemb_starts_at_zero_and_decodes_like_teacher_forcing():
    assert _param_shapes(image_posemb="learn") == {**_param_shapes(), "image_pos/embedding": (N, D_ENC)}
    image_tokens, tokens = _inputs()
    learned = decoder.Model(**CFG, conditioning="cross", image_posemb="learn")
    init = learned.init(jax.random.PRNGKey(0), image_tokens, tokens, PREFIX_LEN)
    assert not np.any(init["params"]["image_pos"]["embedding"])
    plain = {"params": {k: v for k, v in init["params"].items() if k != "image_pos"}}
    np.testing.assert_array_equal(learned.apply(init, image_tokens, tokens, PREFIX_LEN),
                                  decoder.Model(**CFG, conditioning="cross").apply(plain, image_tokens, tokens, PREFIX_LEN))
    for conditioning in ("cross", "prefix"):  # with a nonzero table, through the KV cache
        h = Harness(conditioning, cfg={**CFG, "image_posemb": "learn"})
        full = h.forward(h.params, image_tokens, tokens, PREFIX_LEN)
        cached, _ = h.decode(image_tokens, tokens, PREFIX_LEN)
        np.testing.assert_allclose(cached, _teacher_rows(full, PREFIX_LEN, STEPS), atol=1e-5, rtol=0)
