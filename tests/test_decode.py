"""Decoding and scoring: KV-cached vs full recomputation, beam vs greedy, EOS handling, sampling
cuts, batch independence, candidate scoring and classification, input errors.

Compiles dominate the run time on CPU. So every conditioning shares one tiny model, each decoding
structure compiles once (sampling settings, length penalty and eos id are traced), XLA's
optimisation passes are off for this module, and the checks whose code does not branch on the
conditioning (beam size 1, sampling cuts, the teacher-forced reference of `score`, the image
path) run on one conditioning only: 'prefix', the one whose forward also reads prefix_len.
"""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from litlab import decode
from litlab.models import lit_decoder

B, V, MAX_LEN, T, IMG, N_IMG = 3, 50, 24, 8, 16, 4
PREFIX_LEN = np.array([3, 6, 10])  # different per example; the block is padded to width 16
WIDTH = 20  # full sequences for `score`: prompt + T new tokens + padding
ENC = dict(patch_size=(8, 8), width=32, depth=1, mlp_dim=64, num_heads=2, pool_type="gap")
CONDITIONINGS = ("cross", "prefix", "pooled")


@pytest.fixture(scope="module", autouse=True)
def _quick_compiles():
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@functools.cache
def _setup(conditioning):
    dec = dict(vocab_size=V, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=MAX_LEN,
               conditioning=conditioning)
    model = lit_decoder.Model(encoder_cfg=ENC, decoder_cfg=dec, image_size=(IMG, IMG))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (B, IMG, IMG, 3)).astype(np.float32)
    # Junk after each prompt (ids >= 3, never PAD) proves that only tokens[:, :prefix_len] is read.
    tokens = rng.integers(3, V, (B, 12)).astype(np.int32)
    tokens[:, 0] = 2
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, PREFIX_LEN,
                            images=images)["params"]
    # Random values rather than init: nonzero biases, and no init to compile.
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(s.dtype)),
                          shapes)
    image_tokens = jnp.asarray(rng.normal(size=(B, N_IMG, ENC["width"])).astype(np.float32))
    forward = jax.jit(functools.partial(model.apply, {"params": params}))
    return types.SimpleNamespace(model=model, params=params, tokens=tokens, images=images,
                                 image_tokens=image_tokens, forward=forward)


def _gen(conditioning, method="greedy", rows=slice(None), **kw):
    s = _setup(conditioning)
    out = decode.generate(s.model, s.params, s.tokens[rows], PREFIX_LEN[rows],
                          image_tokens=s.image_tokens[rows], method=method, max_new_tokens=T, **kw)
    return jax.tree.map(np.asarray, out)


@functools.cache
def _reference(conditioning):
    """Greedy tokens that never stop, and an eos id that example 0 emits at its third step."""
    tokens, _ = _gen(conditioning, eos_id=None)
    return tokens, int(tokens[0, 2])


def _lengths(new, eos):
    """Number of generated tokens up to and including the first EOS (else all of them)."""
    hit = new == eos
    return np.where(hit.any(-1), hit.argmax(-1) + 1, new.shape[-1])


def _full(conditioning, new, eos):
    """Whole sequences prompt + new tokens (up to EOS) and their loss mask, for `score`."""
    s, n = _setup(conditioning), _lengths(new, eos)
    tokens, mask = np.zeros((B, WIDTH), np.int32), np.zeros((B, WIDTH), np.float32)
    for b, p in enumerate(PREFIX_LEN):
        tokens[b, :p], tokens[b, p:p + n[b]] = s.tokens[b, :p], new[b, :n[b]]
        mask[b, p:p + n[b]] = 1
    return tokens, mask


def _score(conditioning, new, eos, **kw):
    s = _setup(conditioning)
    tokens, mask = _full(conditioning, new, eos)
    return np.asarray(decode.score(s.model, s.params, tokens, PREFIX_LEN, mask,
                                   image_tokens=s.image_tokens, **kw))


def _teacher_logits(conditioning, new, eos):
    """Teacher-forced logits [B, T, V] at the positions that predicted each new token."""
    s = _setup(conditioning)
    tokens, _ = _full(conditioning, new, eos)
    logits = np.asarray(s.forward(tokens[:, :-1], PREFIX_LEN, image_tokens=s.image_tokens))
    return np.stack([logits[b, p - 1:p - 1 + T] for b, p in enumerate(PREFIX_LEN)])


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_cached_greedy_matches_full_recomputation_and_stops_at_eos(conditioning):
    ref, eos = _reference(conditioning)
    assert ref.shape == (B, T) and ref.dtype == np.int32
    tokens, scores = _gen(conditioning, eos_id=eos)
    slow_tokens, slow_scores = _gen(conditioning, eos_id=eos, use_cache=False)
    np.testing.assert_array_equal(tokens, slow_tokens)
    np.testing.assert_allclose(scores, slow_scores, atol=1e-4)
    # Stopping changes nothing before the EOS, keeps the EOS and pads after it.
    n = _lengths(ref, eos)
    assert n[0] <= 3
    other_pad, _ = _gen(conditioning, eos_id=eos, pad_id=V - 1)
    for b in range(B):
        np.testing.assert_array_equal(tokens[b, :n[b]], ref[b, :n[b]])
        assert (tokens[b, n[b]:] == 0).all() and (other_pad[b, n[b]:] == V - 1).all()
        np.testing.assert_array_equal(other_pad[b, :n[b]], ref[b, :n[b]])
    np.testing.assert_allclose(scores, _score(conditioning, tokens, eos), atol=1e-4)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_examples_do_not_depend_on_their_batch_neighbours(conditioning):
    _, eos = _reference(conditioning)
    tokens, scores = _gen(conditioning, eos_id=eos)
    # Other neighbours, other rows (same shapes)...
    order = np.array([2, 0, 1])
    moved, moved_scores = _gen(conditioning, rows=order, eos_id=eos)
    np.testing.assert_array_equal(moved, tokens[order])
    np.testing.assert_allclose(moved_scores, scores[order], atol=1e-4)
    # ...and alone, where the short prompt also gets a narrower prompt block (8, not 16).
    alone, alone_score = _gen(conditioning, rows=slice(0, 1), eos_id=eos)
    np.testing.assert_array_equal(alone[0], tokens[0])
    np.testing.assert_allclose(alone_score[0], scores[0], atol=1e-4)


@pytest.mark.parametrize("conditioning", ["prefix"])
def test_a_wider_prompt_block_and_a_larger_budget_keep_the_tokens(conditioning):
    """What lets the tasks of a split share one compiled decoder (evaluate.decode_shapes)."""
    s = _setup(conditioning)
    args = (s.model, s.params, s.tokens[:1], PREFIX_LEN[:1])
    short, _ = decode.generate(*args, image_tokens=s.image_tokens[:1], max_new_tokens=4, eos_id=None)
    long, _ = decode.generate(*args, image_tokens=s.image_tokens[:1], max_new_tokens=T, eos_id=None,
                              prompt_width=16)  # example 0's prompt (3 tokens) alone gets width 8
    np.testing.assert_array_equal(np.asarray(long)[:, :4], np.asarray(short))


@pytest.mark.parametrize("conditioning", ["prefix"])
def test_beam_of_one_is_greedy(conditioning):
    _, eos = _reference(conditioning)
    tokens, scores = _gen(conditioning, eos_id=eos)
    beam, beam_scores = _gen(conditioning, "beam:1", eos_id=eos)
    assert beam.shape == (B, 1, T)
    np.testing.assert_array_equal(beam[:, 0], tokens)
    np.testing.assert_allclose(beam_scores[:, 0], scores, atol=1e-4)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_beam_n_best_is_sorted_and_scored_like_score(conditioning):
    _, eos = _reference(conditioning)
    for alpha in (0.0, 0.6):
        beams, scores = _gen(conditioning, f"beam:3,n=3,alpha={alpha}", eos_id=eos)
        assert beams.shape == (B, 3, T) and scores.shape == (B, 3)
        assert (np.diff(scores, axis=1) <= 0).all()
        assert all(len({tuple(hyp) for hyp in beams[b]}) == 3 for b in range(B))
        for j in range(3):
            n = _lengths(beams[:, j], eos)
            penalty = ((5.0 + n) / 6.0) ** alpha
            want = _score(conditioning, beams[:, j], eos)
            np.testing.assert_allclose(scores[:, j] * penalty, want, atol=1e-4)
            after = np.arange(T)[None] >= n[:, None]
            assert (beams[:, j][after] == 0).all()
    assert (beams == eos).any()  # finished hypotheses, not only ones truncated at T


@pytest.mark.parametrize("conditioning", ["prefix"])
def test_sampling(conditioning):
    _, eos = _reference(conditioning)
    greedy, greedy_scores = _gen(conditioning, eos_id=eos)
    key = jax.random.PRNGKey(0)
    # Cuts that leave one token, or temperature 0, are greedy decoding.
    for spec in ("sample:k=1", "sample:t=0", "sample:t=2,p=0.000001"):
        tokens, scores = _gen(conditioning, spec, eos_id=eos, rng=key)
        np.testing.assert_array_equal(tokens, greedy, err_msg=spec)
        np.testing.assert_allclose(scores, greedy_scores, atol=1e-4, err_msg=spec)
    # Deterministic given the key; another key gives another sample.
    a, a_scores = _gen(conditioning, "sample:t=1.5", eos_id=None, rng=key)
    b, _ = _gen(conditioning, "sample:t=1.5", eos_id=None, rng=key)
    c, _ = _gen(conditioning, "sample:t=1.5", eos_id=None, rng=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy).any()
    np.testing.assert_allclose(a_scores, _score(conditioning, a, -1), atol=1e-4)
    # Every sampled token lies inside the top-k set, or inside the nucleus.
    for spec in ("sample:t=3,k=3", "sample:t=3,p=0.3"):
        tokens, _ = _gen(conditioning, spec, eos_id=None, rng=key)
        logits = _teacher_logits(conditioning, tokens, -1) / 3.0
        rank = (logits > np.take_along_axis(logits, tokens[..., None], -1) + 1e-4).sum(-1)
        if "k=" in spec:
            assert rank.max() < 3 and (rank > 0).any(), spec
        else:
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            mass_before = np.sort(probs, -1)[..., ::-1].cumsum(-1)
            mass_before = np.take_along_axis(mass_before, rank[..., None] - 1, -1)[..., 0]
            assert ((rank == 0) | (mass_before < 0.3 + 1e-4)).all(), spec
            assert (rank > 0).any(), spec


@pytest.mark.parametrize("conditioning", ["prefix"])
def test_score_matches_manual_log_softmax(conditioning):
    ref, _ = _reference(conditioning)
    tokens, mask = _full(conditioning, ref, -1)
    s = _setup(conditioning)
    logits = np.asarray(s.forward(tokens[:, :-1], PREFIX_LEN, image_tokens=s.image_tokens),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = (np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0] * mask[:, 1:]).sum(1)
    np.testing.assert_allclose(_score(conditioning, ref, -1), want, atol=1e-4)
    np.testing.assert_allclose(_score(conditioning, ref, -1, normalize=True), want / T, atol=1e-4)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_classify_by_scoring_agrees_with_score(conditioning):
    s = _setup(conditioning)
    rng = np.random.default_rng(5)
    lengths = np.array([1, 4, 2, 3, 2])  # class names of different lengths, EOS included
    cands = np.zeros((len(lengths), 4), np.int32)
    for c, n in enumerate(lengths):
        cands[c, :n - 1], cands[c, n - 1] = rng.integers(3, V, n - 1), 1
    best, scores = decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, cands,
                                              image_tokens=s.image_tokens, chunk=2)
    assert scores.shape == (B, len(cands))
    np.testing.assert_array_equal(best, np.argmax(scores, 1))
    for c in range(len(cands)):
        new = np.broadcast_to(np.pad(cands[c], (0, T - 4)), (B, T))
        np.testing.assert_allclose(scores[:, c], _score(conditioning, new, 1), atol=1e-4)
    _, normalized = decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, cands,
                                               image_tokens=s.image_tokens, chunk=2, normalize=True)
    np.testing.assert_allclose(normalized, scores / lengths, rtol=1e-6)


def test_classify_by_scoring_keeps_cache_copies_within_max_rows(monkeypatch):
    """Each (example, candidate) pair scores against its own cache copy; by default no more
    than max_rows copies are live, however many classes there are (the demo's 9.4 GB peak)."""
    s = _setup("cross")
    cands = np.array([[c, 1] for c in range(3, 10)], np.int32)  # 7 one-token classes
    chunks = []
    real = decode._classify_fn
    monkeypatch.setattr(decode, "_classify_fn", lambda model, chunk, pad: chunks.append(chunk) or real(model, chunk, pad))
    _, all_at_once = decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, cands,
                                                image_tokens=s.image_tokens, chunk=len(cands))
    _, bounded = decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, cands,
                                            image_tokens=s.image_tokens, max_rows=2 * B)
    assert chunks == [len(cands), 2]
    np.testing.assert_allclose(bounded, all_at_once, atol=1e-5)


def test_images_or_image_tokens_give_the_same_tokens():
    s = _setup("prefix")
    image_tokens = jax.jit(functools.partial(s.model.apply, method="encode"))(
        {"params": s.params}, s.images)
    args = (s.model, s.params, s.tokens, PREFIX_LEN)
    from_images = decode.generate(*args, images=s.images, max_new_tokens=T)
    from_tokens = decode.generate(*args, image_tokens=image_tokens, max_new_tokens=T)
    np.testing.assert_array_equal(from_images[0], from_tokens[0])


def test_repeated_calls_reuse_the_compiled_decoder():
    s = _setup("prefix")
    key = jax.random.PRNGKey(0)
    for spec, prompts in (("sample:t=0.7", s.tokens), ("sample:t=1.3,k=5,p=0.9", s.tokens[::-1])):
        decode.generate(s.model, s.params, prompts, PREFIX_LEN[::-1], image_tokens=s.image_tokens,
                        method=spec, max_new_tokens=T, rng=key)
    fn = decode._decode_fn(lit_decoder.ByConfig(s.model), "sample", 1, 1, T, True)
    assert fn._cache_size() == 1


def test_parse_method():
    assert decode.parse_method("greedy") == decode.Method("greedy")
    assert decode.parse_method("beam:4,alpha=0.6,n=2") == decode.Method(
        "beam", beam_size=4, alpha=0.6, n_best=2)
    assert decode.parse_method("sample:t=0.8,k=40,p=0.95") == decode.Method(
        "sample", temperature=0.8, top_k=40, top_p=0.95)
    assert decode.parse_method("sample") == decode.Method("sample")


@pytest.mark.parametrize("spec,match", [
    ("nucleus", r"unknown decoding method 'nucleus'; use 'greedy', 'beam:<size>"),
    ("greedy:t=1", "takes no options"),
    ("beam", "needs a beam size"),
    ("beam:x", "beam size must be an integer"),
    ("beam:2,n=3", "n must be between 1 and the beam size"),
    ("beam:2,temp=1", r"unknown option 'temp=1'.*alpha=, n="),
    ("sample:p=0", r"p must be in \(0, 1\]"),
    ("sample:t=-1", "t must be >= 0"),
])
def test_bad_method_strings(spec, match):
    with pytest.raises(ValueError, match=match):
        decode.parse_method(spec)


def test_bad_inputs_are_reported_before_compiling():
    s = _setup("prefix")

    def gen(tokens=s.tokens, prefix_len=PREFIX_LEN, **kw):
        kw = {"image_tokens": s.image_tokens, "max_new_tokens": T, **kw}
        return decode.generate(s.model, s.params, tokens, prefix_len, **kw)

    with pytest.raises(ValueError, match=f"beam size {V + 1} exceeds the vocabulary size {V}"):
        gen(method=f"beam:{V + 1}")
    with pytest.raises(ValueError, match="example 1 has an empty prompt"):
        gen(prefix_len=np.array([3, 0, 4]))
    with pytest.raises(ValueError, match="sampling needs rng="):
        gen(method="sample")
    with pytest.raises(ValueError, match="exactly one of images= or image_tokens="):
        gen(images=s.images)
    long = np.full((B, 30), 5, np.int32)
    with pytest.raises(ValueError, match=f"example 2: its prompt has 26 tokens but the decoder's "
                                         f"max_len is {MAX_LEN}; shorten the prompt"):
        gen(tokens=long, prefix_len=np.array([3, 4, 26]))
    with pytest.raises(ValueError, match=r"example 2: prefix_len=10 \+ max_new_tokens=20 exceeds "
                                         r"the decoder's max_len=24; lower max_new_tokens to at "
                                         r"most 14 or build the decoder with max_len >= 30"):
        gen(max_new_tokens=20)
    with pytest.raises(ValueError, match="loss_mask\\[:, 0\\] must be 0"):
        decode.score(s.model, s.params, s.tokens, PREFIX_LEN, np.ones((B, 12)),
                     image_tokens=s.image_tokens)
    cands = np.array([[7, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="candidate 1 is empty"):
        decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, cands,
                                   image_tokens=s.image_tokens)
    with pytest.raises(ValueError, match="candidate 0 has tokens after padding"):
        decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, np.array([[7, 0, 1]]),
                                   image_tokens=s.image_tokens)


# Question memory: the decoder holds the question as memory next to the image (question_len > 0).
Q_LEN = 8


@functools.cache
def _q_setup(conditioning):
    base = _setup(conditioning)
    dec = dict(vocab_size=V, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=MAX_LEN,
               conditioning=conditioning, question_len=Q_LEN)
    model = lit_decoder.Model(encoder_cfg=ENC, decoder_cfg=dec, image_size=(IMG, IMG))
    rng = np.random.default_rng(1)
    questions = rng.integers(3, V, (B, 5)).astype(np.int32)
    questions[0, 3:], questions[2, 1:] = 0, 0  # right-padded with 0
    shapes = jax.eval_shape(functools.partial(model.init, question_tokens=questions),
                            jax.random.PRNGKey(0), base.tokens, PREFIX_LEN,
                            images=base.images)["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape).astype(s.dtype)),
                          shapes)
    return types.SimpleNamespace(model=model, params=params, tokens=base.tokens,
                                 image_tokens=base.image_tokens, questions=questions)


def _q_score(s, new, n, questions):
    """`score` of prompt + the first n[b] tokens of new[b], with the question memory."""
    tokens, mask = np.zeros((B, WIDTH), np.int32), np.zeros((B, WIDTH), np.float32)
    for b, p in enumerate(PREFIX_LEN):
        tokens[b, :p], tokens[b, p:p + n[b]] = s.tokens[b, :p], new[b, :n[b]]
        mask[b, p:p + n[b]] = 1
    return np.asarray(decode.score(s.model, s.params, tokens, PREFIX_LEN, mask,
                                   image_tokens=s.image_tokens, question_tokens=questions))


def test_question_memory_greedy_beam_scoring_and_classification():
    s = _q_setup("cross")
    gen = functools.partial(decode.generate, s.model, s.params, s.tokens, PREFIX_LEN,
                            image_tokens=s.image_tokens, max_new_tokens=T, eos_id=None)
    full_t = np.full(B, T)
    tokens, scores = gen(question_tokens=s.questions)
    slow_tokens, slow_scores = gen(question_tokens=s.questions, use_cache=False)
    np.testing.assert_array_equal(tokens, slow_tokens)
    np.testing.assert_allclose(scores, slow_scores, atol=1e-4)
    np.testing.assert_allclose(scores, _q_score(s, np.asarray(tokens), full_t, s.questions),
                               atol=1e-4)
    # Questions are padded to question_len inside: any Q gives the same result, one compilation.
    wide = np.pad(s.questions, ((0, 0), (0, Q_LEN - s.questions.shape[1])))
    wide_tokens, wide_scores = gen(question_tokens=wide)
    np.testing.assert_array_equal(wide_tokens, tokens)
    np.testing.assert_allclose(wide_scores, scores, atol=1e-5)
    fn = decode._decode_fn(lit_decoder.ByConfig(s.model), "greedy", 1, 1, T, True)
    assert fn._cache_size() == 1
    # The question matters.
    _, other_scores = gen(question_tokens=s.questions[::-1])
    assert np.abs(np.asarray(other_scores) - np.asarray(scores)).max() > 1e-3

    beams, beam_scores = gen(question_tokens=s.questions, method="beam:2,n=2")
    assert beams.shape == (B, 2, T) and beam_scores.shape == (B, 2)
    assert (np.diff(np.asarray(beam_scores), axis=1) <= 0).all()
    for j in range(2):
        np.testing.assert_allclose(beam_scores[:, j],
                                   _q_score(s, np.asarray(beams[:, j]), full_t, s.questions),
                                   atol=1e-4)

    cands = np.array([[7, 1, 0], [9, 11, 1], [1, 0, 0]], np.int32)
    best, cls_scores = decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, cands,
                                                  image_tokens=s.image_tokens,
                                                  question_tokens=s.questions, chunk=2)
    np.testing.assert_array_equal(best, np.argmax(cls_scores, 1))
    for c, n in enumerate((2, 3, 1)):
        new = np.broadcast_to(np.pad(cands[c], (0, T - 3)), (B, T))
        np.testing.assert_allclose(cls_scores[:, c], _q_score(s, new, np.full(B, n), s.questions),
                                   atol=1e-4)


def test_question_errors_are_reported_before_compiling():
    s, plain = _q_setup("cross"), _setup("prefix")
    with pytest.raises(ValueError, match=f"question_len={Q_LEN}: pass question_tokens"):
        decode.generate(s.model, s.params, s.tokens, PREFIX_LEN, image_tokens=s.image_tokens,
                        max_new_tokens=T)
    with pytest.raises(ValueError, match=rf"Q <= question_len={Q_LEN}, got shape \(3, 9\)"):
        decode.generate(s.model, s.params, s.tokens, PREFIX_LEN, image_tokens=s.image_tokens,
                        question_tokens=np.ones((B, Q_LEN + 1), np.int32), max_new_tokens=T)
    with pytest.raises(ValueError, match=f"question_len={Q_LEN}: pass question_tokens"):
        decode.classify_by_scoring(s.model, s.params, s.tokens, PREFIX_LEN, np.array([[7, 1]]),
                                   image_tokens=s.image_tokens)
    with pytest.raises(ValueError, match="question_tokens were passed but this decoder has "
                                         "question_len=0"):
        decode.generate(plain.model, plain.params, plain.tokens, PREFIX_LEN,
                        image_tokens=plain.image_tokens, question_tokens=s.questions,
                        max_new_tokens=T)
