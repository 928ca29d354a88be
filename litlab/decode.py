"""Text generation and candidate scoring for `litlab.models.lit_decoder.Model`.

  generate              greedy, beam search or sampling, chosen by a method string; the whole
                        decode (prefill, token loop, stop test) is one jitted lax.while_loop with
                        static shapes on the decoder's functional KV cache. `use_cache=False`
                        runs the same loop but recomputes the full teacher-forced forward at every
                        step: the reference that tests compare against and the benchmark's baseline.
  score                 teacher-forced log-likelihood of the target tokens of whole sequences.
  classify_by_scoring   CapPa-style classification: the log-likelihood of every class name.

Layout (as in training): tokens [B, L] = BOS prompt SEP target EOS PAD...; prefix_len [B] counts
BOS + prompt + SEP. For generation only tokens[:, :prefix_len] is read, so `tokens` may be a
training batch or just the prompts. Outputs hold the generated tokens only: position t is the
(t+1)-th new token, an example's EOS is kept and everything after it is `pad_id`.

Question memory: with a decoder built with `question_len` > 0 (see `litlab.models.decoder`) every
entry point takes `question_tokens` [B, Q] (Q <= question_len, right-padded with 0), a traced
argument; it is padded here to [B, question_len], so every question length shares one compilation
(padded slots are masked out, so this changes no output).

Every example is decoded on its own: prompts of different lengths sit right-padded in one block
and each example writes and reads the cache at its own positions, so its tokens do not depend on
its batch neighbours. Jitted functions are cached per (model config, method, static settings) and
jax.jit keys them on shapes; the prompt block is padded to a multiple of 8 so that batches with
slightly different prompt lengths share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from litlab.models import decoder, lit_decoder

METHOD_HELP = "'greedy', 'beam:<size>[,alpha=A][,n=N]' or 'sample[:t=T][,k=K][,p=P]'"
_OPTIONS = {  # option name in the method string -> (Method field, type)
    "beam": {"alpha": ("alpha", float), "n": ("n_best", int)},
    "sample": {"t": ("temperature", float), "k": ("top_k", int), "p": ("top_p", float)},
}
_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class Method:
    """A parsed decoding method.

    Beam scores are sum log-prob / ((5 + len) / 6) ** alpha, the GNMT length penalty, with len the
    number of generated tokens including EOS; alpha=0 (the default) ranks by plain log-likelihood,
    so beam scores are then exactly what `score` returns. Sampling applies temperature, then
    top-k, then top-p; temperature 0 means argmax.
    """

    name: str
    beam_size: int = 1
    alpha: float = 0.0
    n_best: int = 1
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut.
    top_p: float = 1.0  # 1: no nucleus cut.


def parse_method(spec: str) -> Method:
    """Parses e.g. "greedy", "beam:4", "beam:4,alpha=0.6,n=2", "sample:t=0.8,k=40,p=0.95"."""
    name, colon, rest = spec.strip().partition(":")
    if name not in ("greedy", "beam", "sample"):
        raise ValueError(f"unknown decoding method {spec!r}; use {METHOD_HELP}")
    parts = [p.strip() for p in rest.split(",")] if colon else []
    if name == "greedy":
        if parts:
            raise ValueError(f"'greedy' takes no options, got {spec!r}")
        return Method("greedy")
    kw = {}
    if name == "beam":
        if not parts or "=" in parts[0]:
            raise ValueError(f"beam search needs a beam size first, e.g. 'beam:4', got {spec!r}")
        kw["beam_size"] = _number(int, parts.pop(0), "beam size", spec)
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in _OPTIONS[name]:
            raise ValueError(f"unknown option {part!r} in {spec!r}; {name} takes "
                             f"{', '.join(k + '=' for k in _OPTIONS[name])}")
        field, kind = _OPTIONS[name][key.strip()]
        kw[field] = _number(kind, value, key.strip(), spec)
    m = Method(name, **kw)
    checks = [(m.beam_size >= 1, "beam size must be >= 1"),
              (1 <= m.n_best <= m.beam_size, "n must be between 1 and the beam size"),
              (m.alpha >= 0, "alpha must be >= 0"),
              (m.temperature >= 0, "t must be >= 0"),
              (m.top_k >= 0, "k must be >= 0"),
              (0 < m.top_p <= 1, "p must be in (0, 1]")]
    for ok, msg in checks:
        if not ok:
            raise ValueError(f"{msg}, got {spec!r}")
    return m


def _number(kind, text, what, spec):
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {text!r} in {spec!r}") from None


def _decoder_cfg(model) -> decoder.Model:
    """The decoder's config with its defaults filled in (an unbound module, never applied)."""
    return decoder.Model(**model.decoder_cfg, parent=None)


def _check_images(images, image_tokens):
    if (images is None) == (image_tokens is None):
        raise ValueError("pass exactly one of images= or image_tokens=")


def _question(cfg, question_tokens, batch):
    """Checked question_tokens padded to [B, question_len], so every Q shares one compilation."""
    q = decoder.check_question_tokens(question_tokens, cfg.question_len, batch)
    return None if q is None else jnp.pad(q, ((0, 0), (0, cfg.question_len - q.shape[1])))


def _prompts(tokens, prefix_len, extra, max_len, pad_id, extra_name, min_width=0):
    """Validates prompts; returns (block [B, P] jnp int32, lengths [B] jnp int32).

    P is the longest prompt, or min_width if larger, rounded up to a multiple of 8 (at most
    max_len), padded with pad_id. `extra` new positions must fit after every prompt within max_len.
    """
    shape = np.shape(tokens)
    if len(shape) != 2:
        raise ValueError(f"tokens must be [B, L], got shape {shape}")
    lengths = np.asarray(prefix_len)
    if lengths.shape != (shape[0],):
        raise ValueError(f"prefix_len must be [B] = [{shape[0]}], got shape {lengths.shape}")
    if (bad := np.flatnonzero(lengths < 1)).size:
        i = int(bad[0])
        raise ValueError(f"example {i} has an empty prompt (prefix_len={int(lengths[i])}); "
                         "every prompt holds at least BOS")
    i = int(np.argmax(lengths))
    longest = int(lengths[i])
    if longest > shape[1]:
        raise ValueError(f"example {i}: prefix_len={longest} exceeds the tokens width {shape[1]}")
    if longest > max_len:
        raise ValueError(f"example {i}: its prompt has {longest} tokens but the decoder's "
                         f"max_len is {max_len}; shorten the prompt or build the decoder with a "
                         "larger max_len")
    if longest + extra > max_len:
        raise ValueError(f"example {i}: prefix_len={longest} + {extra_name}={extra} exceeds the "
                         f"decoder's max_len={max_len}; lower {extra_name} to at most "
                         f"{max_len - longest} or build the decoder with "
                         f"max_len >= {longest + extra}")
    width = min(-(-max(longest, min_width) // _BUCKET) * _BUCKET, max_len)
    block = jnp.asarray(tokens, jnp.int32)[:, :width]
    block = jnp.pad(block, ((0, 0), (0, width - block.shape[1])), constant_values=pad_id)
    return block, jnp.asarray(lengths, jnp.int32)


def _steps(model, variables, use_cache, pad_id):
    """(prefill, extend) over a decoding state whose leaves all have a leading batch axis, so
    that beam search can repeat and reorder it with one gather.

    With the KV cache these are the model's own methods. Without it the state is the token
    buffer itself and every step runs the full teacher-forced forward over all cache_len
    positions, reading the logits at each example's current position.
    """
    if use_cache:
        def prefill(block, lengths, image_tokens, question_tokens, cache_len):
            return model.apply(variables, block, lengths, image_tokens=image_tokens,
                               question_tokens=question_tokens, cache_len=cache_len,
                               method="prefill")

        def extend(state, token):
            return model.apply(variables, state, token, method="extend")

        return prefill, extend

    def logits_at(state, pos):
        logits = model.apply(variables, state["buf"], state["prefix_len"],
                             image_tokens=state["image_tokens"],
                             question_tokens=state.get("question_tokens"))
        return logits[jnp.arange(pos.shape[0]), pos]

    def prefill(block, lengths, image_tokens, question_tokens, cache_len):
        buf = jnp.pad(block, ((0, 0), (0, cache_len - block.shape[1])))
        buf = jnp.where(jnp.arange(cache_len) < lengths[:, None], buf, pad_id)
        state = {"buf": buf, "pos": lengths, "prefix_len": lengths, "image_tokens": image_tokens}
        if question_tokens is not None:
            state["question_tokens"] = question_tokens
        return logits_at(state, lengths - 1), state

    def extend(state, token):
        pos = state["pos"]
        buf = state["buf"].at[jnp.arange(pos.shape[0]), pos].set(token, mode="drop")
        state = {**state, "buf": buf, "pos": pos + 1}
        return logits_at(state, pos), state

    return prefill, extend


def _loop(select, extend, first, state, carry, max_new, done_of):
    """Runs select on the prefill logits, then (extend, select) until max_new tokens or all done.

    select(i, logits, state, carry) -> (next token [rows], state, carry). Selecting before the
    loop saves the last, useless extend.
    """
    token, state, carry = select(0, first, state, carry)

    def cond(c):
        return (c[0] < max_new) & ~jnp.all(done_of(c[3]))

    def body(c):
        i, state, token, carry = c
        logits, state = extend(state, token)
        token, state, carry = select(i, logits, state, carry)
        return i + 1, state, token, carry

    return lax.while_loop(cond, body, (jnp.int32(1), state, token, carry))[3]


def _pick(knobs, logits, key):
    """Samples next tokens [B] from logits [B, V] after temperature, top-k and top-p cuts.

    The knobs are traced, so one compilation serves every setting; temperature 0 is the argmax.
    """
    def sample(logits):
        x = logits / knobs["temperature"]
        desc = -jnp.sort(-x, axis=-1)
        k = knobs["top_k"]
        kth = jnp.where(k > 0, desc[:, jnp.maximum(k, 1) - 1], -jnp.inf)[:, None]
        desc = jnp.where(desc < kth, -jnp.inf, desc)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
        keep = jnp.sum(before < knobs["top_p"], axis=-1)  # the smallest set reaching p; >= 1
        cutoff = jnp.take_along_axis(desc, keep[:, None] - 1, axis=-1)
        cutoff = jnp.where(knobs["top_p"] < 1, cutoff, kth)  # p=1 must not lose rounding tails
        return jax.random.categorical(key, jnp.where(x < cutoff, -jnp.inf, x)).astype(jnp.int32)

    return lax.cond(knobs["temperature"] == 0, _argmax, sample, logits)


def _argmax(logits):
    return jnp.argmax(logits, -1).astype(jnp.int32)


def _sequential(sampling, knobs, extend, logits, state, rng, max_new):
    """Greedy or sampled decoding. Scores are the model's own log-probs (t=1, no cuts), so they
    are comparable with `score` whatever the sampling settings."""
    batch, eos_id, pad_id = logits.shape[0], knobs["eos_id"], knobs["pad_id"]

    def select(i, logits, state, carry):
        out, total, done = carry
        token = _pick(knobs, logits, jax.random.fold_in(rng, i)) if sampling else _argmax(logits)
        token = jnp.where(done, pad_id, token)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], axis=-1)[:, 0]
        total = total + jnp.where(done, 0.0, logp)
        return token, state, (out.at[:, i].set(token), total, done | (token == eos_id))

    carry = (jnp.full((batch, max_new), pad_id, jnp.int32), jnp.zeros(batch, jnp.float32),
             jnp.zeros(batch, bool))
    out, total, _ = _loop(select, extend, logits, state, carry, max_new, lambda c: c[2])
    return out, total


def _beam_search(k, n, knobs, extend, logits, state, max_new):
    """Beam search with beam size k and an n-best list of finished hypotheses per example.

    Each step takes the 2k best extensions of the k live beams (at most k of them end in EOS, so
    k live ones remain). Those of the top k that end in EOS enter the n-best list with their
    length-penalised score (only the top k, so that beam size 1 is greedy decoding); the k best
    others stay live and the state is gathered to follow them. An example is done once its n-th
    best finished score beats the best that any live beam can still reach; beams still live
    after max_new tokens count as finished at that length.
    """
    batch, vocab = logits.shape
    eos_id, pad_id = knobs["eos_id"], knobs["pad_id"]
    rows = jnp.arange(batch)[:, None]

    def penalty(length):
        return ((5.0 + length) / 6.0) ** knobs["alpha"]

    def pick(x, idx):  # x [B, m, ...], idx [B, j] -> [B, j, ...]
        return x[rows, idx]

    def select(i, logits, state, carry):
        live_seq, live_lp, fin_seq, fin_score, done = carry
        lp = jax.nn.log_softmax(logits).reshape(batch, k, vocab) + live_lp[:, :, None]
        cand_lp, flat = lax.top_k(lp.reshape(batch, k * vocab), min(2 * k, k * vocab))
        parent, token = flat // vocab, flat % vocab
        seq = pick(live_seq, parent).at[:, :, i].set(token)
        ended = token == eos_id
        in_top = jnp.arange(token.shape[1]) < k
        new = jnp.where(ended & in_top & ~done[:, None], cand_lp / penalty(i + 1), -jnp.inf)
        fin_score, best = lax.top_k(jnp.concatenate([fin_score, new], 1), n)
        fin_seq = pick(jnp.concatenate([fin_seq, seq], 1), best)
        live_lp, best = lax.top_k(jnp.where(ended, -jnp.inf, cand_lp), k)
        live_seq, parent, token = pick(seq, best), pick(parent, best), pick(token, best)
        state = jax.tree.map(lambda x: x[(rows * k + parent).reshape(-1)], state)
        # Log-probs only fall as a beam grows and the penalty is largest at max_new.
        done = done | (fin_score[:, -1] >= live_lp[:, 0] / penalty(max_new))
        return token.reshape(-1), state, (live_seq, live_lp, fin_seq, fin_score, done)

    state = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), state)
    # Only beam 0 is live at first: the others would duplicate it.
    live_lp = jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (batch, k))
    carry = (jnp.full((batch, k, max_new), pad_id, jnp.int32), live_lp,
             jnp.full((batch, n, max_new), pad_id, jnp.int32), jnp.full((batch, n), -jnp.inf),
             jnp.zeros(batch, bool))
    live_seq, live_lp, fin_seq, fin_score, done = _loop(
        select, extend, jnp.repeat(logits, k, axis=0), state, carry, max_new, lambda c: c[4])
    # The loop only stops early once every example is done, so live beams here have max_new tokens.
    truncated = jnp.where(done[:, None], -jnp.inf, live_lp / penalty(max_new))
    fin_score, best = lax.top_k(jnp.concatenate([fin_score, truncated], 1), n)
    return pick(jnp.concatenate([fin_seq, live_seq], 1), best), fin_score


@functools.lru_cache(maxsize=64)
def _decode_fn(model: lit_decoder.ByConfig, name: str, beam_size: int, n_best: int, max_new: int,
               use_cache: bool):
    """The jitted decoder for one model config and loop structure; jax.jit then keys it on
    shapes. Everything else (temperature, cuts, alpha, eos/pad ids) is traced: no recompiles."""
    mdl, max_len = model.module, _decoder_cfg(model.module).max_len

    def run(params, block, lengths, images, image_tokens, question_tokens, knobs, rng):
        variables = {"params": params}
        if images is not None:  # Encode once; the loop never touches the ViT.
            image_tokens = mdl.apply(variables, images, method="encode")
        prefill, extend = _steps(mdl, variables, use_cache, knobs["pad_id"])
        cache_len = min(max_len, block.shape[1] + max_new)
        logits, state = prefill(block, lengths, image_tokens, question_tokens, cache_len)
        if name == "beam":
            return _beam_search(beam_size, n_best, knobs, extend, logits, state, max_new)
        return _sequential(name == "sample", knobs, extend, logits, state, rng, max_new)

    return jax.jit(run)


def generate(model, params, tokens, prefix_len, *, images=None, image_tokens=None,
             question_tokens=None, method: str = "greedy", max_new_tokens: int = 32,
             eos_id: int | None = 1, pad_id: int = 0, rng=None, use_cache: bool = True,
             prompt_width: int = 0):
    """Generates up to max_new_tokens after each prompt tokens[b, :prefix_len[b]].

    `model` is a lit_decoder.Model, `params` its `params` collection, and exactly one of images
    [B, H, W, 3] or image_tokens [B, N, D] conditions the text, with question_tokens [B, Q] (pad
    0) as extra memory iff the decoder has question_len > 0. `method` is a string (see
    `parse_method`); sampling needs `rng`, a jax.random key. Returns
      greedy / sample:  tokens [B, T] int32, scores [B] (sum of the model's log-probs);
      beam:             tokens [B, n, T] int32, scores [B, n] (best first, length-penalised),
    with T = max_new_tokens and `pad_id` after each EOS; eos_id=None never stops early (fixed
    work, e.g. for benchmarks). use_cache=False recomputes the whole forward at every step (the
    slow reference). `prompt_width` pads the prompt block to at least that many positions, so
    that calls whose prompts differ in length share one compiled program (padding never changes
    the tokens).
    """
    m = parse_method(method)
    cfg = _decoder_cfg(model)
    if m.name == "beam" and m.beam_size > cfg.vocab_size:
        raise ValueError(f"beam size {m.beam_size} exceeds the vocabulary size {cfg.vocab_size}")
    if m.name == "sample" and rng is None:
        raise ValueError("sampling needs rng=, a jax.random key (e.g. jax.random.PRNGKey(0))")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    _check_images(images, image_tokens)
    block, lengths = _prompts(tokens, prefix_len, max_new_tokens, cfg.max_len, pad_id,
                              "max_new_tokens", prompt_width)
    question_tokens = _question(cfg, question_tokens, block.shape[0])
    knobs = {"temperature": jnp.float32(m.temperature), "top_p": jnp.float32(m.top_p),
             "top_k": jnp.int32(min(m.top_k, cfg.vocab_size)), "alpha": jnp.float32(m.alpha),
             "eos_id": jnp.int32(-1 if eos_id is None else eos_id), "pad_id": jnp.int32(pad_id)}
    fn = _decode_fn(lit_decoder.ByConfig(model), m.name, m.beam_size, m.n_best, max_new_tokens, use_cache)
    return fn(params, block, lengths, images, image_tokens, question_tokens, knobs,
              rng if m.name == "sample" else None)


@functools.lru_cache(maxsize=64)
def _score_fn(model: lit_decoder.ByConfig):
    mdl = model.module

    def run(params, tokens, prefix_len, loss_mask, images, image_tokens, question_tokens):
        logits = mdl.apply({"params": params}, tokens[:, :-1], prefix_len, images=images,
                           image_tokens=image_tokens, question_tokens=question_tokens)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.sum(logp * loss_mask[:, 1:], axis=1)

    return jax.jit(run)


def score(model, params, tokens, prefix_len, loss_mask, *, images=None, image_tokens=None,
          question_tokens=None, normalize=False):
    """Log-likelihood [B] of the tokens that loss_mask marks, by one teacher-forced pass.

    tokens [B, L] and loss_mask [B, L] are laid out as in training (the pipeline's loss_mask:
    1 on target and EOS tokens). The first token is given, never predicted, so loss_mask[:, 0]
    must be 0. normalize=True divides by the number of marked tokens (0 where none are marked).
    """
    _check_images(images, image_tokens)
    shape, max_len = np.shape(tokens), _decoder_cfg(model).max_len
    if len(shape) != 2 or shape[1] < 2:
        raise ValueError(f"tokens must be [B, L] with L >= 2, got shape {shape}")
    if shape[1] - 1 > max_len:
        raise ValueError(f"tokens of width {shape[1]} feed {shape[1] - 1} positions, more than the "
                         f"decoder's max_len={max_len}; trim the padding or raise max_len")
    if np.shape(loss_mask) != shape:
        raise ValueError(f"loss_mask must have the shape of tokens {shape}, "
                         f"got {np.shape(loss_mask)}")
    if np.any(np.asarray(loss_mask)[:, 0]):
        raise ValueError("loss_mask[:, 0] must be 0: the first token is never predicted")
    if np.shape(prefix_len) != (shape[0],):
        raise ValueError(f"prefix_len must be [B] = [{shape[0]}], got shape {np.shape(prefix_len)}")
    question_tokens = _question(_decoder_cfg(model), question_tokens, shape[0])
    loss_mask = jnp.asarray(loss_mask, jnp.float32)
    total = _score_fn(lit_decoder.ByConfig(model))(params, jnp.asarray(tokens, jnp.int32),
                                        jnp.asarray(prefix_len, jnp.int32), loss_mask, images,
                                        image_tokens, question_tokens)
    return total / jnp.maximum(loss_mask[:, 1:].sum(1), 1.0) if normalize else total


@functools.lru_cache(maxsize=64)
def _classify_fn(model: lit_decoder.ByConfig, chunk: int, pad_id: int):
    """Prefills each prompt once, then teacher-forces the candidates through the KV cache.

    The cache (image K/V included) is repeated `chunk` times along the batch and each candidate
    chunk is fed token by token with `extend`: per candidate this costs only its own tokens,
    whereas a full forward per (image, candidate) pair would redo the prompt and the image part
    (the cross-attention K/V, or the whole image prefix for 'prefix') C times.
    """
    mdl, max_len = model.module, _decoder_cfg(model.module).max_len

    def run(params, block, lengths, cands, images, image_tokens, question_tokens):
        variables = {"params": params}
        if images is not None:
            image_tokens = mdl.apply(variables, images, method="encode")
        prefill, extend = _steps(mdl, variables, True, pad_id)
        batch, width = block.shape[0], cands.shape[1]
        logits, cache = prefill(block, lengths, image_tokens, question_tokens,
                                min(max_len, block.shape[1] + width))
        first = jnp.repeat(jax.nn.log_softmax(logits), chunk, axis=0)
        cache = jax.tree.map(lambda x: jnp.repeat(x, chunk, axis=0), cache)
        rows = jnp.arange(batch * chunk)

        def score_chunk(group):  # group [chunk, Lc]; row b * chunk + c is (example b, candidate c)
            toks = jnp.tile(group, (batch, 1))
            mask = (toks != pad_id).astype(jnp.float32)

            def body(carry, j):
                cache, total = carry
                logits, cache = extend(cache, toks[:, j - 1])
                lp = jax.nn.log_softmax(logits)[rows, toks[:, j]]
                return (cache, total + lp * mask[:, j]), None

            (_, total), _ = lax.scan(body, (cache, first[rows, toks[:, 0]]), jnp.arange(1, width))
            return total.reshape(batch, chunk)

        scores = lax.map(score_chunk, cands.reshape(-1, chunk, width))  # [chunks, B, chunk]
        return jnp.moveaxis(scores, 0, 1).reshape(batch, -1)

    return jax.jit(run)


def classify_by_scoring(model, params, prompt_tokens, prefix_len, candidate_tokens, *,
                        images=None, image_tokens=None, question_tokens=None, normalize=False,
                        pad_id=0, chunk=None, max_rows=2048):
    """CapPa-style classification: scores every candidate as the continuation of each prompt.

    prompt_tokens [B, P] (BOS prompt SEP, right-padded; prefix_len [B]) and candidate_tokens
    [C, Lc] (each a class name's target ids and EOS, right-padded with pad_id); question_tokens
    [B, Q] (pad 0) iff the decoder has question_len > 0. The image part and the prompt are
    computed once per image; `chunk` candidates are scored at a time, each against its own copy
    of the cache, so B * chunk copies are live at once. By default chunk keeps that within
    `max_rows`: all 162 classes of a 256-image batch at once held 16,384 copies of the image K/V
    and made `make demo` peak at 9.4 GB. Returns (best index [B], scores [B, C]) where
    scores[b, c] is what `score` gives the sequence prompt b + candidate c (normalize=True: per
    token).
    """
    _check_images(images, image_tokens)
    cands = np.asarray(candidate_tokens)
    if cands.ndim != 2 or cands.shape[0] < 1:
        raise ValueError(f"candidate_tokens must be [C, Lc] with C >= 1, got shape {cands.shape}")
    real = cands != pad_id
    if (bad := np.flatnonzero(~real[:, 0])).size:
        raise ValueError(f"candidate {int(bad[0])} is empty (it starts with pad_id={pad_id})")
    if (bad := np.flatnonzero(np.any(real[:, 1:] & ~real[:, :-1], axis=1))).size:
        raise ValueError(f"candidate {int(bad[0])} has tokens after padding; right-pad candidates")
    cfg = _decoder_cfg(model)
    block, lengths = _prompts(prompt_tokens, prefix_len, cands.shape[1], cfg.max_len, pad_id,
                              "the candidates' width")
    question_tokens = _question(cfg, question_tokens, block.shape[0])
    n = cands.shape[0]
    chunk = max(1, min(chunk or max_rows // block.shape[0], n))
    padded = np.full((-(-n // chunk) * chunk, cands.shape[1]), pad_id, np.int32)
    padded[:n] = cands
    fn = _classify_fn(lit_decoder.ByConfig(model), chunk, pad_id)
    scores = fn(params, block, lengths, jnp.asarray(padded), images, image_tokens,
                question_tokens)[:, :n]
    if normalize:
        scores = scores / real.sum(1)
    return jnp.argmax(scores, axis=1), scores
