"""Image tokens read off the renderer's annotations instead of an encoder: the ceiling.

A decoder that cannot answer a question from an encoder's tokens has two suspects: the decoder
(size, steps, recipe) and the tokens (what they hold, and how cleanly). Giving the same decoder
tokens that name exactly what they cover separates the two. An oracle token is one-hot over the
color and over the shape of the object whose box holds the token's center, and all zeros on the
background, padded with zeros to the encoder's width so that the decoder, its shapes and its
compiled programs are the ones an encoder run uses (`inputs.image_tokens="oracle"`). With
`inputs.image_tokens="encoder+oracle"` the same one-hot features replace the first features of
the encoder's own tokens (`overlay`): the signal is perfect, the other features are the encoder's.
Such a run reads oracle tokens wherever tokens come from `runs.image_tokens` (training,
evaluation, studies); prompting it with pixels (`litlab.prompting`) would feed it the encoder's
tokens, which it never saw.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from litlab.data import scenes, tasks
from litlab.pretrain import patch_objects

COLORS = tuple(scenes.COLORS)
SHAPES = scenes.SHAPES
FEATURES = len(COLORS) + len(SHAPES)


def tokens_for(objects: list[dict], resolution: int, patch: int, width: int) -> np.ndarray:
    """float32 [(resolution / patch)^2, width]: one image's oracle tokens."""
    if width < FEATURES:
        raise ValueError(f"oracle tokens need an encoder width of at least {FEATURES} (one-hot color and "
                         f"shape), got {width}; set encoder.model.width higher.")
    table = np.zeros((len(objects) + 1, width), np.float32)  # row 0: background
    for k, o in enumerate(objects):
        table[k + 1, COLORS.index(o["color"])] = 1.0
        table[k + 1, len(COLORS) + SHAPES.index(o["shape"])] = 1.0
    return table[patch_objects(objects, resolution, patch)]


def overlay(encoder_tokens: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """A copy of `encoder_tokens` [n, N, D] whose first FEATURES features are the oracle's: the
    same perfect signal as the oracle arm, beside the encoder's other features instead of zeros
    (`inputs.image_tokens="encoder+oracle"`). If a decoder finds it there as it does in pure oracle
    tokens, the encoder's dense features do not hide it, and what the encoder lacks is the signal."""
    if encoder_tokens.shape != oracle.shape:
        raise ValueError(f"encoder tokens {encoder_tokens.shape} and oracle tokens {oracle.shape} differ in shape.")
    out = np.array(encoder_tokens, copy=True)
    out[..., :FEATURES] = oracle[..., :FEATURES]
    return out


def tokens(image_keys: list[str], token_shape: tuple[int, int], *, seed: int, resolution: int) -> np.ndarray:
    """float32 [n, N, D] oracle tokens for the embedded benchmark's images named by `image_keys`
    ("source/split/index"), from the same records (data seed, resolution) the images came from."""
    n_tokens, width = token_shape
    side = int(round(n_tokens ** 0.5))
    if side * side != n_tokens or resolution % side:
        raise ValueError(f"oracle tokens need a square token grid that tiles {resolution}px images; the encoder "
                         f"gives {n_tokens} tokens.")
    wanted: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for row, key in enumerate(image_keys):
        parts = key.split("/")
        if len(parts) != 3 or parts[0] not in scenes.SOURCES or not parts[2].isdigit():
            raise ValueError(f"image {key!r} is not an image of the embedded benchmark: oracle tokens "
                             "(inputs.image_tokens='oracle' or 'encoder+oracle') are built from its renderer's "
                             "object boxes.")
        wanted[parts[0], parts[1]].append((row, int(parts[2])))
    out = np.zeros((len(image_keys), n_tokens, width), np.float32)
    for (source, split), rows in wanted.items():
        _, records = tasks.read_records(source, split, seed=seed, resolution=resolution,
                                        limit=max(i for _, i in rows) + 1)
        for row, i in rows:
            if "objects" not in records[i]:
                raise ValueError(f"image {image_keys[row]!r}: source {source!r} has no object boxes, so it has no "
                                 "oracle tokens; use inputs.image_tokens='oracle' or 'encoder+oracle' with objects, "
                                 "scenes or text_scenes tasks.")
            out[row] = tokens_for(records[i]["objects"], resolution, resolution // side, width)
    return out
