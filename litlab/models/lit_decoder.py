"""LiT-decoder: a ViT encoder (usually frozen) plus an autoregressive text decoder.

Params tree: {"img": <vit params>, "decoder": <decoder params>} (the `params`
collection). Initialise with images so both subtrees exist:

    model = Model(encoder_cfg=dict(width=..., ...), decoder_cfg=dict(vocab_size=..., ...),
                  image_size=(224, 224))
    params = model.init(rng, tokens[:, :-1], prefix_len, images=images)["params"]

Every entry point takes exactly one of `images` [B, H, W, 3] in [-1, 1] or
`image_tokens` [B, N, D_enc] precomputed by `encode` (a feature cache: with a
frozen encoder the ViT then never runs during training). Both give the same
logits. The frozen encoder's output passes through stop_gradient, so no
gradient flows into it; set `encoder_trainable` to True or to a block index N
and pair it with `litlab.freeze.masked_optimizer(tx, params,
frozen_patterns(encoder_trainable))` to fine-tune all of it or blocks >= N.

A decoder built with `question_len` > 0 (question memory, see
`litlab.models.decoder`) also takes `question_tokens` [B, Q] (right-padded
with 0) at `__call__` and `prefill`; they are passed through unchanged.

Incremental decoding wraps the decoder's functional KV cache (see
`litlab.models.decoder` for the cache layout):

    logits, cache = model.apply({"params": p}, prefix_tokens, prefix_len,
                                images=images, method=Model.prefill)
    logits, cache = model.apply({"params": p}, cache, token, method=Model.extend)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from litlab.models import decoder, vit


class ByConfig:
    """Hashes a Flax module by its config (its repr), so that equal models share compiled
    functions across runs. Linen modules with dict fields (this Model) are not hashable."""

    def __init__(self, module):
        self.module, self.key = module, repr(module)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, ByConfig) and other.key == self.key


@functools.lru_cache(maxsize=32)
def _token_shape(encoder: ByConfig, h: int, w: int) -> tuple[int, int]:
    out = jax.eval_shape(lambda: encoder.module.init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3), jnp.float32))[0][1]["encoded"])
    return tuple(out.shape[1:])


class Model(nn.Module):
    """Encoder `img` = vit.Model(**encoder_cfg), decoder `decoder` = decoder.Model(**decoder_cfg)."""

    encoder_cfg: Mapping[str, Any]
    decoder_cfg: Mapping[str, Any]
    image_size: Sequence[int] = (224, 224)
    encoder_trainable: bool | int = False

    def setup(self):
        trainable = self.encoder_trainable
        if not (isinstance(trainable, bool) or (isinstance(trainable, int) and trainable >= 0)):
            raise ValueError(f"encoder_trainable must be a bool or an int >= 0, got {trainable!r}")
        self.img = vit.Model(**self.encoder_cfg)
        self.decoder = decoder.Model(**self.decoder_cfg)

    def token_shape(self) -> tuple[int, int]:
        """(N, D_enc) of the image tokens that `encode` returns for `image_size` images. Traced
        once per encoder config and size: every run, evaluation and train-step trace asks."""
        # An unbound copy (parent=None), so that shape inference adds no submodule.
        return _token_shape(ByConfig(vit.Model(**self.encoder_cfg, parent=None)), *self.image_size)

    def encode(self, images, *, train=False):
        """Image tokens [B, N, D_enc] (the encoder's `encoded` output), e.g. to cache them."""
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or tuple(images.shape[1:3]) != tuple(self.image_size):
            raise ValueError(f"images must be [B, {self.image_size[0]}, {self.image_size[1]}, 3] "
                             f"(image_size={tuple(self.image_size)}), got {images.shape}")
        _, out = self.img(images, train=train)
        return out["encoded"]

    def _image_tokens(self, batch, images, image_tokens, train):
        if (images is None) == (image_tokens is None):
            raise ValueError("pass exactly one of images= or image_tokens=")
        if images is not None:
            x = self.encode(images, train=train and self.encoder_trainable is not False)
            if self.encoder_trainable is False:
                x = jax.lax.stop_gradient(x)
        else:
            x = jnp.asarray(image_tokens)
            n, d = self.token_shape()
            if x.ndim != 3 or x.shape[1:] != (n, d):
                raise ValueError(f"image_tokens must be [B, {n}, {d}] for this encoder_cfg and "
                                 f"image_size={tuple(self.image_size)}, got {x.shape}")
        if x.shape[0] != batch:
            raise ValueError(f"batch size mismatch: {x.shape[0]} images vs {batch} token rows")
        return x

    def __call__(self, tokens, prefix_len, *, images=None, image_tokens=None, question_tokens=None,
                 train=False):
        """Teacher-forced logits [B, L, vocab] float32 for tokens [B, L] (= full[:, :-1])."""
        x = self._image_tokens(tokens.shape[0], images, image_tokens, train)
        return self.decoder(x, tokens, prefix_len, question_tokens=question_tokens, train=train)

    def prefill(self, tokens, lengths, *, images=None, image_tokens=None, question_tokens=None,
                cache_len=None):
        """Decoder `prefill` on a right-padded prompt block; returns (logits [B, V], cache)."""
        x = self._image_tokens(tokens.shape[0], images, image_tokens, False)
        return self.decoder.prefill(x, tokens, lengths, question_tokens=question_tokens,
                                    cache_len=cache_len)

    def extend(self, cache, token):
        """Decoder `extend`: one token per example; returns (logits [B, V], cache)."""
        return self.decoder.extend(cache, token)


def load(init_params, encoder_npz_path, encoder_cfg, dont_load=()):
    """Returns `init_params` with its `img` subtree loaded from a big_vision ViT `.npz`.

    `dont_load` holds regexes over names inside `img` (see vit.load); the
    decoder keeps its init values.
    """
    img = vit.load(init_params["img"], encoder_npz_path, encoder_cfg, dont_load)
    return {**init_params, "img": img}
