"""The frozen-feature cache: a frozen encoder's image tokens, computed once per image.

With the encoder locked, its output for an image never changes, so training the decoder only
needs each image's tokens once. They are stored in bfloat16 (half the memory; the decoder
projects them in float32), in memory or in a memory-mapped `.npy` file under the cache folder,
named by a digest of the encoder parameters, the image keys and the pixels themselves, so a
later run over the same images with the same encoder reuses the file instead of encoding again,
and a run over other pixels (another render seed, another resolution, an edited image file)
never reads it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

BF16 = ml_dtypes.bfloat16


def params_digest(params) -> str:
    """A short digest of a parameter tree's names, shapes and values."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        arr = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((arr.shape, arr.dtype)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def cache_key(encoder_digest: str, image_keys: list[str], images: np.ndarray) -> str:
    """Names the cache file by everything its rows depend on: the encoder and the exact pixels.
    Hashing the pixels (about 1 GB/s) is what makes the key safe against any change to how
    images are rendered or read, not just the ones someone thought to list."""
    h = hashlib.blake2b(f"{encoder_digest}|{images.shape}|{images.dtype}|".encode(), digest_size=16)
    h.update("\n".join(image_keys).encode())
    h.update(memoryview(np.ascontiguousarray(images)).cast("B"))
    return h.hexdigest()[:20]


def encode_all(encode: Callable[[jax.Array], jax.Array], images: np.ndarray, token_shape: tuple[int, int],
               *, batch_size: int = 256, out: np.ndarray | None = None, desc: str = "cache features") -> np.ndarray:
    """Runs `encode` (uint8 images [b, R, R, 3] -> tokens [b, N, D]) over all images in fixed-size
    batches (the last one padded, so there is a single compilation), writing bfloat16 rows into
    `out` (a memory map, say) or a new array."""
    n = len(images)
    if out is None:
        out = np.empty((n,) + tuple(token_shape), BF16)
    for lo in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n <= batch_size):
        chunk = images[lo:lo + batch_size]
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real,) + chunk.shape[1:], chunk.dtype)])
        tokens = np.asarray(jax.device_get(encode(jnp.asarray(chunk))))
        out[lo:lo + real] = tokens[:real].astype(BF16)
    return out


def build(encode: Callable[[jax.Array], jax.Array], images: np.ndarray, image_keys: list[str],
          token_shape: tuple[int, int], *, encoder_digest: str, where: str = "memory",
          cache_dir: str | Path | None = None, batch_size: int = 256, desc: str = "cache features") -> np.ndarray:
    """Image tokens [n_images, N, D] bfloat16, row i for `images[i]`.

    where="memory" keeps them in RAM; where="disk" keeps a memory-mapped file in `cache_dir`
    (reused when it already holds these images for this encoder; written under a temporary name
    and renamed, so an interrupted build never leaves a half-written cache behind).
    """
    if len(images) != len(image_keys):
        raise ValueError(f"{len(images)} images but {len(image_keys)} image keys.")
    if where == "memory":
        return encode_all(encode, images, token_shape, batch_size=batch_size, desc=desc)
    if where != "disk":
        raise ValueError(f"feature cache 'where' must be 'memory' or 'disk', got {where!r}.")
    if cache_dir is None:
        raise ValueError("a disk feature cache needs cache_dir.")
    path = Path(cache_dir) / f"features-{cache_key(encoder_digest, image_keys, images)}.npy"
    shape = (len(images),) + tuple(token_shape)
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape:
            return cached.view(BF16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    raw = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=shape)
    encode_all(encode, images, token_shape, batch_size=batch_size, out=raw.view(BF16), desc=desc)
    raw.flush()
    del raw
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r").view(BF16)


def nbytes(token_shape: tuple[int, int], n_images: int) -> int:
    """Bytes a cache of n_images takes (bfloat16), to check it fits before building it."""
    return int(n_images * np.prod(token_shape) * 2)
