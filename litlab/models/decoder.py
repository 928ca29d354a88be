"""Autoregressive text decoder conditioned on (frozen) image tokens.

A pre-LN Transformer decoder. Image tokens from the encoder ([B, N, D_enc])
go through one learned Dense projection to the decoder width, then condition
the text in one of three ways (`conditioning`). (With D_enc <= width,
'cross' and 'pooled' compose that projection into each layer's K/V maps: the
same function and params, fewer FLOPs.)

  'cross'   every block: causal self-attention, cross-attention to the N
            projected image tokens, MLP (CapPa-style).
  'prefix'  decoder-only prefix-LM: the projected image tokens are prepended.
            Image tokens and the prompt (text positions < prefix_len) attend
            to each other bidirectionally; targets attend causally
            (PaliGemma-style).
  'pooled'  like 'cross', but the memory is a single token: the mean over the
            image tokens (a single token is passed through unchanged). We use
            cross-attention rather than a single prefix token so that 'pooled'
            has exactly the parameters and block structure of 'cross': the
            comparison then isolates the information bottleneck (N tokens vs
            one vector) and nothing else.

Text layout: `tokens` [B, L] = BOS prompt SEP target EOS PAD...; the model
sees `tokens[:, :-1]` and `prefix_len` [B] counts BOS + prompt + SEP. Text
positions use learned position embeddings 0..max_len-1. Padding needs no
mask: it sits after EOS, so causal attention never lets a real position
see it. Image tokens get no position embedding by default
(`image_posemb="none"`: the encoder encoded their positions), or a code
added before the projection: "sincos2d" (fixed, the ViT's 2D sin-cos over
the token grid) or "learn" (learned, zero at init). Attention is blind to
token order, and a frozen encoder trained on per-token objectives keeps
positions only in part: a linear probe recovers the column of 0.85 of the
shipped encoder's tokens on word images, 0.99 at random init (`probe
--position`). Added before `img_proj`, the code folds into the K/V maps
like the tokens themselves.

Question memory (`question_len` > 0; the "modality combination" study of
LiT-decoder, Beyer et al. 2023): the VQA question is not part of the prompt
but extra memory next to the image, and the prompt keeps only a task cue.
Every entry point (`__call__`, `prefill`) then takes `question_tokens`
int32 [B, Q], Q <= question_len, right-padded with pad id 0; every slot that
holds 0 is masked out as a key, so extra padding never changes any output.
The question memory is

    question_ln(embed(question_tokens) + question_pos_embedding[:Q])

with the shared (possibly output-tied) token embedding `embed`, a learned
position embedding `question_pos_embedding` [question_len, W] (slot q gets
row q) and a LayerNorm `question_ln`, then the text dropout. The LayerNorm is
there because 'cross'/'pooled' feed memory to the cross-attention K/V with no
pre-LN: without it the question tokens would sit at the scale of the text
embedding (norm ~1, set by the tied output head) instead of that of the
projected image tokens; it also gives the question memory its own gain and
bias, separate from the tied embedding. It costs (question_len + 2) * W
parameters. The question tokens follow the projected image tokens:

  'cross'   memory = N image tokens, then Q question tokens (padded ones masked);
  'prefix'  prepended sequence = N image tokens, then Q question tokens, all at
            "position -1": bidirectional with each other and the prompt;
            padded question slots are masked as keys (as queries their
            outputs are computed and dropped);
  'pooled'  memory = the pooled image token, then Q question tokens.

`image_input=False` is the "text only" arm, which measures the language
prior: the image tokens are replaced by zeros before the projection, so every
image slot holds the projection bias and the memory carries no information
about the image. Shapes, parameters and compute are those of the image arm, so
the two arms differ in nothing but the image content (and the same params
load into either).

With question_len == 0 (the default) the parameter tree, the cache and every
output are exactly those of the image-only model, and passing
`question_tokens` is an error, as is omitting them when question_len > 0.

Incremental decoding (functional KV cache)
------------------------------------------
The cache is a plain pytree whose every leaf has a leading batch axis, so a
beam search can reorder or repeat it with `jax.tree.map(lambda x: x[idx], c)`:

  cache = {
    "pos":    int32 [B]   text position of the next token fed to `extend`,
                          i.e. the number of text tokens already cached;
    "mem_mask": bool [B, M]  only when question_len > 0: which memory slots
                          ("mk"/"mv" below) are visible; False exactly at
                          padded question slots. Shared by all layers.
    "layers": tuple over depth of {
        "k", "v":   [B, H, S, Dh]  text self-attention keys/values. Slot t
                                   holds position t; slots >= pos are stale
                                   and masked out.
        "mk", "mv": [B, H, M, Dh]  image keys/values, computed once in
                                   `prefill`: cross-attention K/V ('cross':
                                   M=N, 'pooled': M=1) or the image prefix's
                                   self-attention K/V ('prefix': M=N). With
                                   question memory M grows by Q (the question
                                   slots follow the image ones).
    }}

S is `cache_len` (default max_len); H = num_heads, Dh = width // num_heads;
K/V are stored heads before positions: the layout a decode step's attention
products read, so it never transposes the whole cache (with [B, S, H, Dh] it
did, every layer and every token: a third of decode time). Teacher forcing
keeps [B, T, H, Dh], where XLA:CPU runs the bfloat16 products in bfloat16 (in
heads-major layout it upcast 12 of them). They are stored in `dtype_mm`,
except on CPU (see `_cache_dtype`). Two module methods, both deterministic:

  logits, cache = model.apply(params, image_tokens, tokens, lengths,
                              cache_len=S, method=Model.prefill)
                              # + question_tokens=[B, Q] when question_len > 0
      tokens [B, T] is a right-padded prompt block (T <= S); lengths [B] >= 1
      counts each example's valid tokens, which are all treated as the prefix
      (bidirectional in 'prefix'), so pass the whole BOS+prompt+SEP with
      lengths = prefix_len. Returns the next-token logits [B, V] float32 at
      position lengths-1, and the cache with pos = lengths.

  logits, cache = model.apply(params, cache, token, method=Model.extend)
      token [B] int32 is written at each example's own position cache["pos"]
      (then pos += 1); returns logits [B, V] float32 for the next token. It
      never reads the image, the question or the projections (the memory
      mask comes from the cache), and no example reads another example's
      cache. Stop before pos reaches S: writes past the end are
      dropped.

Both are jit- and lax.while_loop-friendly (static shapes, no token loops).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from litlab.models import matmul, vit

CONDITIONINGS = ("cross", "prefix", "pooled")
IMAGE_POSEMBS = ("none", "sincos2d", "learn")
LN_EPS = 1e-6

_NEG_INF = jnp.finfo(jnp.float32).min


# Every matmul takes `dtype_mm` inputs, forward and backward, and accumulates and returns
# float32 (models/matmul.py); parameters and everything else stay float32.
def _dense(features, dtype_mm, axis=-1):
    return nn.DenseGeneral(features, axis=axis, dot_general=matmul.flax_dot_general(dtype_mm),
                           kernel_init=nn.initializers.xavier_uniform())


def _cache_dtype(dtype_mm: str) -> str:
    """The KV cache's dtype, which is also that of a decode step's attention products: float32
    on CPU, where XLA has no bfloat16 scatter or batched bfloat16 attention product and so
    converted a bfloat16 cache to float32 and back three times per layer per token (a third of
    bfloat16 decode time at batch 64); `dtype_mm` elsewhere, where a bfloat16 cache halves the
    memory traffic."""
    return "float32" if jax.default_backend() == "cpu" else dtype_mm


def _attend(q, segments, heads_major=False):
    """Softmax attention of q [B, Tq, H, Dh] over the concatenation of key segments.

    Each segment is (k, v, mask) with k, v [B, Tk, H, Dh] ([B, H, Tk, Dh] when
    `heads_major`, the cache's layout) and mask bool
    [B, Tq, Tk] (or None = all visible). Splitting keys into segments lets a
    decode step attend jointly to cached image K/V and the text cache
    without copying them into one buffer. Each segment's products take its
    K/V dtype as input dtype (`dtype_mm`, or the cache's). Returns
    [B, Tq, H, Dh] float32.
    """
    q = q * q.shape[-1] ** -0.5
    t, h = (2, 1) if heads_major else (1, 2)  # the key/value axes of positions and heads
    logits = []
    for k, _, mask in segments:  # "bqhd,bkhd->bhqk"
        s = matmul.dot_general(q, k, (((3,), (3,)), ((0, 2), (0, h))), k.dtype)
        logits.append(s if mask is None else jnp.where(mask[:, None], s, _NEG_INF))
    probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    out, start = 0.0, 0
    for k, v, _ in segments:  # "bhqk,bkhd->bhqd"
        p = probs[..., start:start + k.shape[t]]
        out = out + matmul.dot_general(p, v, (((3,), (t,)), ((0, 1), (0, h))), v.dtype)
        start += k.shape[t]
    return out.transpose(0, 2, 1, 3)


def _heads_major(x):
    """[B, T, H, Dh] -> [B, H, T, Dh]."""
    return x.transpose(0, 2, 1, 3)


class Attention(nn.Module):
    """Multi-head attention projections; query and key/value are separate methods
    so cached K/V can be reused without recomputing them."""

    width: int
    num_heads: int
    dtype_mm: str = "float32"

    def setup(self):
        heads = (self.num_heads, self.width // self.num_heads)
        self.query = _dense(heads, self.dtype_mm)
        self.key = _dense(heads, self.dtype_mm)
        self.value = _dense(heads, self.dtype_mm)
        self.out = _dense(self.width, self.dtype_mm, axis=(-2, -1))

    def key_value(self, x):
        return self.key(x).astype(self.dtype_mm), self.value(x).astype(self.dtype_mm)

    def key_value_through(self, x, proj):
        """key_value(x @ proj.kernel + proj.bias) for x [B, M, D], without the projected [B, M, W]:
        both maps are affine, so they compose into one D -> (heads, head_dim) map per K and V.
        Used when D <= W (the shipped encoder: 128 into 256): each product is then no larger,
        the projection itself is gone, and training needs no gradient for the projected tokens."""
        proj_aug = jnp.concatenate([proj["kernel"], proj["bias"][None]])  # [D + 1, W]: bias as a last row

        def through(dense):
            p = dense.variables["params"]
            # One batch-free product gives the composed kernel [D, H, Dh] and bias [H, Dh].
            composed = matmul.dot_general(proj_aug, p["kernel"], (((1,), (0,)), ((), ())), self.dtype_mm)
            y = matmul.dot_general(x, composed[:-1], (((x.ndim - 1,), (0,)), ((), ())), self.dtype_mm)
            return (y + composed[-1] + p["bias"]).astype(self.dtype_mm)
        return through(self.key), through(self.value)

    def __call__(self, x, segments, heads_major=False):
        """heads_major: the segments' K/V layout (see _attend)."""
        return self.out(_attend(self.query(x), segments, heads_major))


class Block(nn.Module):
    """Pre-LN decoder block: self-attention, [cross-attention,] MLP."""

    width: int
    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    cross: bool = True
    dtype_mm: str = "float32"

    def setup(self):
        attn = functools.partial(Attention, self.width, self.num_heads, self.dtype_mm)
        self.ln_sa, self.sa = nn.LayerNorm(LN_EPS), attn()
        if self.cross:
            self.ln_xa, self.xa = nn.LayerNorm(LN_EPS), attn()
        self.ln_mlp = nn.LayerNorm(LN_EPS)
        self.mlp_in = _dense(self.mlp_dim, self.dtype_mm)
        self.mlp_out = _dense(self.width, self.dtype_mm)
        self.drop = nn.Dropout(self.dropout)

    def _rest(self, x, mk, mv, mem_mask, deterministic, heads_major=False):
        if self.cross:
            x = x + self.drop(self.xa(self.ln_xa(x), [(mk, mv, mem_mask)], heads_major), deterministic)
        y = self.mlp_out(nn.gelu(self.mlp_in(self.ln_mlp(x))))
        return x + self.drop(y, deterministic)

    def __call__(self, x, mask, mem=None, mem_mask=None, deterministic=True):
        """Whole sequence x [B, T, W] with mask [B, T, T]; if cross, mem is a list of memory
        segments (tokens, proj), concatenated along M: tokens [B, m, W] with proj None, or raw
        [B, m, D] with proj the image projection's params (see Attention.key_value_through),
        and mem_mask [B, 1, M] their key mask (None = all visible).

        Returns x and this layer's K/V ({"k","v"[, "mk","mv"]}) for a cache.
        """
        y = self.ln_sa(x)
        k, v = self.sa.key_value(y)
        x = x + self.drop(self.sa(y, [(k, v, mask)]), deterministic)
        kv = {"k": k, "v": v}
        if self.cross:
            parts = [self.xa.key_value(m) if proj is None else self.xa.key_value_through(m, proj)
                     for m, proj in mem]
            kv["mk"], kv["mv"] = (jnp.concatenate(t, axis=1) for t in zip(*parts))
        return self._rest(x, kv.get("mk"), kv.get("mv"), mem_mask, deterministic), kv

    def step(self, x, layer, pos, mask, mem_mask=None):
        """One token x [B, 1, W] per example at positions pos [B] with key mask [B, 1, S]
        and memory key mask mem_mask [B, 1, M] (None = all visible)."""
        y = self.ln_sa(x)
        k, v = (t.astype(layer["k"].dtype) for t in self.sa.key_value(y))  # the cache's dtype
        rows = jnp.arange(x.shape[0])
        # Index arrays around a slice: the written block is [B, H, Dh], one slot per example.
        layer = {**layer, "k": layer["k"].at[rows, :, pos].set(k[:, 0], mode="drop"),
                 "v": layer["v"].at[rows, :, pos].set(v[:, 0], mode="drop")}
        segments = [(layer["k"], layer["v"], mask)]
        if not self.cross:  # prefix-LM: the image K/V are the first keys of self-attention.
            segments.insert(0, (layer["mk"], layer["mv"], mem_mask))
        x = x + self.sa(y, segments, heads_major=True)
        return self._rest(x, layer["mk"], layer["mv"], mem_mask, True, heads_major=True), layer


def check_question_tokens(question_tokens, question_len: int, batch: int):
    """question_tokens as int32 [B, Q] (Q <= question_len), or None without question memory;
    the one check behind the model and the decoding entry points (which call it before compiling)."""
    if not question_len:
        if question_tokens is not None:
            raise ValueError("question_tokens were passed but this decoder has question_len=0 "
                             "(no question memory); build it with question_len > 0")
        return None
    if question_tokens is None:
        raise ValueError(f"this decoder has question_len={question_len}: pass "
                         "question_tokens int32 [B, Q] (right-padded with 0)")
    q = jnp.asarray(question_tokens)
    if q.ndim != 2 or q.shape[0] != batch or q.shape[1] > question_len:
        raise ValueError(f"question_tokens must be [B={batch}, Q] with Q <= question_len="
                         f"{question_len}, got shape {q.shape}")
    if not jnp.issubdtype(q.dtype, jnp.integer):
        raise ValueError(f"question_tokens must hold integer token ids, got {q.dtype}")
    return q.astype(jnp.int32)


class ImagePosemb(nn.Module):
    """Adds a position code to image tokens [B, N, D] on a square grid (row-major, as the ViT
    emits them): fixed 2D sin-cos ("sincos2d") or a learned [N, D] table ("learn", zeros at
    init, so training starts from the model without it)."""

    kind: str

    @nn.compact
    def __call__(self, x):
        n, d = x.shape[1:]
        if self.kind == "learn":
            return x + self.param("embedding", nn.initializers.zeros, (n, d))
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"image_posemb={self.kind!r} needs a square grid of image tokens, got {n}")
        return x + vit.posemb_sincos_2d(side, side, d)[0]


class Model(nn.Module):
    """Text decoder conditioned on image tokens; see the module docstring."""

    vocab_size: int
    width: int = 512
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int | None = None  # None means 4 * width.
    dropout: float = 0.0
    max_len: int = 64
    tie_embeddings: bool = True
    conditioning: str = "cross"
    dtype_mm: str = "float32"
    question_len: int = 0  # max question tokens held as memory; 0 = no question memory.
    image_input: bool = True  # False: zeros replace the image tokens ("text only" arm).
    image_posemb: str = "none"  # position code added to the image tokens: none | sincos2d | learn.

    def setup(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {self.conditioning!r}; expected one of {CONDITIONINGS}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if self.question_len < 0:
            raise ValueError(f"question_len must be >= 0, got {self.question_len}")
        if self.image_posemb not in IMAGE_POSEMBS:
            raise ValueError(f"unknown image_posemb {self.image_posemb!r}; expected one of {IMAGE_POSEMBS}")
        emb_init = nn.initializers.normal(stddev=self.width ** -0.5)
        if self.image_posemb != "none":
            self.image_pos = ImagePosemb(self.image_posemb)
        self.img_proj = _dense(self.width, self.dtype_mm)
        self.embed = nn.Embed(self.vocab_size, self.width, embedding_init=emb_init)
        self.pos_embedding = self.param("pos_embedding", emb_init, (self.max_len, self.width))
        if self.question_len:
            self.question_pos_embedding = self.param("question_pos_embedding", emb_init,
                                                     (self.question_len, self.width))
            self.question_ln = nn.LayerNorm(LN_EPS)
        self.blocks = [
            Block(self.width, self.num_heads, self.mlp_dim or 4 * self.width, self.dropout,
                  cross=self.conditioning != "prefix", dtype_mm=self.dtype_mm)
            for _ in range(self.depth)]
        self.ln_out = nn.LayerNorm(LN_EPS)
        if not self.tie_embeddings:
            self.head = _dense(self.vocab_size, self.dtype_mm)
        self.drop = nn.Dropout(self.dropout)

    def _question(self, question_tokens, batch):
        return check_question_tokens(question_tokens, self.question_len, batch)

    def _memory(self, image_tokens, question_tokens, deterministic):
        """Memory segments [(tokens, proj)] (see Block) and their key mask [B, M] bool (None when
        there is no question). 'cross' and 'pooled' get the image tokens raw, with the
        projection's params, for the cross-attention to fold into its K/V maps, when that is
        cheaper (D <= W). Otherwise (a wide encoder, 'prefix', or init, which must create
        img_proj's params) they are projected once here."""
        x = jnp.asarray(image_tokens, jnp.float32)
        if not self.image_input:  # "text only": the memory keeps its shape, not the image.
            x = jnp.zeros_like(x)
        if self.image_posemb != "none":
            x = self.image_pos(x)
        if self.conditioning == "pooled":
            # Projecting is affine, so pooling first is exact and N times cheaper.
            x = jnp.mean(x, axis=1, keepdims=True)
        if self.conditioning == "prefix" or self.is_initializing() or x.shape[-1] > self.width:
            mem = [(self.img_proj(x), None)]
        else:
            mem = [(x, self.img_proj.variables["params"])]
        if question_tokens is None:
            return mem, None
        q = question_tokens
        qmem = self.question_ln(self.embed(q) + self.question_pos_embedding[:q.shape[1]])
        qmem = self.drop(qmem, deterministic)
        valid = jnp.concatenate([jnp.ones(x.shape[:2], bool), q != 0], axis=1)
        return mem + [(qmem, None)], valid

    def _embed(self, tokens, positions, deterministic):
        x = self.embed(tokens) + self.pos_embedding[positions]
        return self.drop(x, deterministic)

    def _logits(self, x):
        x = self.ln_out(x)
        if self.tie_embeddings:
            return matmul.dot_general(x, self.embed.embedding, (((x.ndim - 1,), (1,)), ((), ())), self.dtype_mm)
        return self.head(x).astype(jnp.float32)

    def _forward(self, image_tokens, tokens, prefix_len, question_tokens, deterministic):
        """Teacher-forced pass. Returns text hidden states [B, T, W], per-layer K/V and the
        memory key mask [B, M] (None without question memory)."""
        if image_tokens.ndim != 3 or tokens.ndim != 2:
            raise ValueError(f"expected image_tokens [B, N, D] and tokens [B, L], got "
                             f"{image_tokens.shape} and {tokens.shape}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"{tokens.shape[1]} text tokens exceed max_len={self.max_len}")
        question_tokens = self._question(question_tokens, tokens.shape[0])
        mem, mem_valid = self._memory(image_tokens, question_tokens, deterministic)
        t = tokens.shape[1]
        x = self._embed(tokens, jnp.arange(t), deterministic)
        # Key j is visible from query i iff pos[j] <= limit[i]. Text positions
        # are 0..T-1; memory tokens count as position -1 (before all text).
        # Padded question slots are hidden as keys (mem_valid False).
        pos = jnp.arange(t)
        mem_mask = None
        if self.conditioning == "prefix":
            mem = jnp.concatenate([m.astype(x.dtype) for m, _ in mem], axis=1)
            x = jnp.concatenate([mem, x], axis=1)
            pos = jnp.concatenate([jnp.full(mem.shape[1], -1), pos])
            limit = jnp.maximum(pos[None], jnp.asarray(prefix_len)[:, None] - 1)
            mask = pos[None, None, :] <= limit[:, :, None]
            if mem_valid is not None:
                keys = jnp.concatenate([mem_valid, jnp.ones((mem_valid.shape[0], t), bool)], 1)
                mask = mask & keys[:, None, :]
        else:
            mask = pos[None, None, :] <= pos[None, :, None]
            if mem_valid is not None:
                mem_mask = mem_valid[:, None, :]
        layers = []
        for block in self.blocks:
            x, kv = block(x, mask, None if self.conditioning == "prefix" else mem,
                          mem_mask=mem_mask, deterministic=deterministic)
            layers.append(kv)
        return x[:, x.shape[1] - t:], layers, mem_valid

    def __call__(self, image_tokens, tokens, prefix_len, *, question_tokens=None, train=False):
        """Teacher-forced logits [B, L, vocab] float32 for tokens [B, L] (= full[:, :-1]).

        prefix_len [B] only matters for 'prefix' (it sets the bidirectional block).
        question_tokens [B, Q] (pad 0) is required iff question_len > 0.
        """
        h, _, _ = self._forward(image_tokens, tokens, prefix_len, question_tokens, not train)
        return self._logits(h)

    def prefill(self, image_tokens, tokens, lengths, *, question_tokens=None, cache_len=None):
        """Runs the prompt block; returns (next-token logits [B, V], cache). See module docstring.

        question_tokens [B, Q] (pad 0) is required iff question_len > 0.
        """
        cache_len = cache_len or self.max_len
        if not tokens.shape[1] <= cache_len <= self.max_len:
            raise ValueError(f"need prompt block length {tokens.shape[1]} <= cache_len {cache_len} "
                             f"<= max_len {self.max_len}")
        lengths = jnp.asarray(lengths, jnp.int32)
        h, layers, mem_valid = self._forward(image_tokens, tokens, lengths, question_tokens, True)
        last = h[jnp.arange(h.shape[0]), lengths - 1]
        pad = [(0, 0), (0, cache_len - tokens.shape[1]), (0, 0), (0, 0)]
        cache_layers = []
        for kv in layers:
            if self.conditioning == "prefix":  # Split the image part off the joint sequence.
                m = kv["k"].shape[1] - tokens.shape[1]
                kv = {"mk": kv["k"][:, :m], "mv": kv["v"][:, :m], "k": kv["k"][:, m:], "v": kv["v"][:, m:]}
            kv = {**kv, "k": jnp.pad(kv["k"], pad), "v": jnp.pad(kv["v"], pad)}
            cache_layers.append({n: _heads_major(t).astype(_cache_dtype(self.dtype_mm)) for n, t in kv.items()})
        cache = {"pos": lengths, "layers": tuple(cache_layers)}
        if mem_valid is not None:
            cache["mem_mask"] = mem_valid
        return self._logits(last), cache

    def extend(self, cache, token):
        """Feeds token [B] at each example's cache["pos"]; returns (logits [B, V], cache)."""
        if ("mem_mask" in cache) != bool(self.question_len):
            raise ValueError(f"the cache {'has' if 'mem_mask' in cache else 'lacks'} a question "
                             f"memory mask but this decoder has question_len={self.question_len}")
        pos = cache["pos"]
        mem_mask = cache["mem_mask"][:, None, :] if self.question_len else None
        x = self._embed(jnp.asarray(token)[:, None], pos[:, None], True)
        slots = cache["layers"][0]["k"].shape[2]
        mask = (jnp.arange(slots)[None, :] <= pos[:, None])[:, None, :]
        layers = []
        for block, layer in zip(self.blocks, cache["layers"]):
            x, layer = block.step(x, layer, pos, mask, mem_mask)
            layers.append(layer)
        return self._logits(x[:, 0]), {**cache, "pos": pos + 1, "layers": tuple(layers)}
