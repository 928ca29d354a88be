"""A ViT encoder that is parameter- and checkpoint-compatible with big_vision.

litlab puts a small decoder on a frozen pretrained ViT. The encoder keeps
big_vision's constructor arguments, parameter names and `.npz` layout, so
public big_vision checkpoints load as they are. litlab's own encoder ships in
the same format.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import scipy.ndimage

LN_EPS = 1e-6
POOL_TYPES = ("gap", "map", "tok", "0", "none")


def posemb_sincos_2d(h, w, width, temperature=10_000.0, dtype=jnp.float32):
    """Fixed 2D sin-cos position embedding (MoCo v3 / big_vision), shape (1, h*w, width).

    The channels are [sin(x*om), cos(x*om), sin(y*om), cos(y*om)], where om
    runs geometrically from 1 to 1/temperature over width//4 frequencies.
    """
    if width % 4 or width < 8:
        raise ValueError(f"sincos2d posemb needs width to be a multiple of 4 and >= 8, got {width}")
    ys, xs = jnp.mgrid[:h, :w]
    omega = 1.0 / temperature ** (jnp.arange(width // 4) / (width // 4 - 1))
    x_ang = xs.reshape(-1)[:, None] * omega[None, :]
    y_ang = ys.reshape(-1)[:, None] * omega[None, :]
    pe = jnp.concatenate([jnp.sin(x_ang), jnp.cos(x_ang), jnp.sin(y_ang), jnp.cos(y_ang)], axis=1)
    return pe.astype(dtype)[None]


class MlpBlock(nn.Module):
    """Transformer MLP: Dense -> GELU (tanh approximation) -> dropout -> Dense."""

    mlp_dim: int | None = None  # None means 4 * input width.
    dropout: float = 0.0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x, deterministic=True):
        inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                     bias_init=nn.initializers.normal(stddev=1e-6))
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim or 4 * width, dtype=self.dtype_mm, **inits)(x)
        x = nn.gelu(x)
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return nn.Dense(width, dtype=self.dtype_mm, **inits)(x)


class Encoder1DBlock(nn.Module):
    """Pre-LN transformer block. Returns (x, intermediates) so it also works as an nn.scan body."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x, deterministic=True):
        out = {}
        y = nn.LayerNorm(epsilon=LN_EPS)(x)
        y = out["sa"] = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype_mm)(y, y, deterministic=deterministic)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = out["+sa"] = x + y
        y = nn.LayerNorm(epsilon=LN_EPS)(x)
        y = out["mlp"] = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                                  dtype_mm=self.dtype_mm)(y, deterministic)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = out["+mlp"] = x + y
        return x, out


class Encoder(nn.Module):
    """A stack of blocks plus the final `encoder_norm`.

    With scan=True the blocks share one stacked parameter tree `encoderblock`
    (leading depth axis) and are rematerialised. This compiles faster for
    deep models and saves memory in training.
    """

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x, deterministic=True):
        out = {}
        kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                  dtype_mm=self.dtype_mm)
        if self.scan:
            policy = getattr(jax.checkpoint_policies, self.remat_policy, None)
            if policy is None:
                raise ValueError(f"unknown remat_policy {self.remat_policy!r}; "
                                 "use a name from jax.checkpoint_policies")
            # static_argnums counts `self` as 0, so 2 is `deterministic`.
            block = nn.remat(Encoder1DBlock, prevent_cse=False, static_argnums=(2,), policy=policy)
            x, scan_out = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast, length=self.depth,
            )(name="encoderblock", **kw)(x, deterministic)
            for i in range(self.depth):
                out[f"block{i:02d}"] = jax.tree.map(lambda a, i=i: a[i], scan_out)
        else:
            for i in range(self.depth):
                x, out[f"block{i:02d}"] = Encoder1DBlock(name=f"encoderblock_{i}", **kw)(
                    x, deterministic)
        out["pre_ln"] = x
        return nn.LayerNorm(epsilon=LN_EPS, name="encoder_norm")(x), out


class MAPHead(nn.Module):
    """Multihead attention pooling: one learned probe token attends over the sequence."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, x):
        n, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d))
        probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
            dtype=self.dtype_mm)(probe, x)
        y = nn.LayerNorm(epsilon=LN_EPS)(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, dtype_mm=self.dtype_mm)(y)
        return x[:, 0]


class Model(nn.Module):
    """big_vision's ViT: same arguments, same parameter tree, same `(x, out)` return.

    `__call__` returns `(logits if num_classes else pre_logits, out)`. `out`
    holds the intermediates: "stem", "with_posemb", "encoder" (per block),
    "encoded" (all tokens after encoder_norm, with the cls token for
    pool_type 'tok'), "head_input", "pre_logits", "pre_logits_2d", and
    "logits"/"logits_2d" when num_classes is set. Params are always float32.
    dtype_mm only sets the dtype of the matmul inputs.
    """

    num_classes: int | None = None
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None
    num_heads: int = 12
    posemb: str = "learn"
    rep_size: int | bool = False
    dropout: float = 0.0
    pool_type: str = "gap"
    head_zeroinit: bool = True
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, image, *, train=False):
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"unknown pool_type {self.pool_type!r}; expected one of {POOL_TYPES}")
        out = {}
        patch = tuple(self.patch_size)
        x = out["stem"] = nn.Conv(self.width, patch, strides=patch, padding="VALID",
                                  dtype=self.dtype_mm, name="embedding")(
            jnp.asarray(image, self.dtype_mm))
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])

        if self.posemb == "learn":
            pe = self.param("pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(c)),
                            (1, h * w, c))
        elif self.posemb == "sincos2d":
            pe = posemb_sincos_2d(h, w, c)
        else:
            raise ValueError(f"unknown posemb {self.posemb!r}; expected 'learn' or 'sincos2d'")
        # The posemb covers the patch grid only. A cls token is added afterwards.
        x = out["with_posemb"] = x + pe.astype(x.dtype)

        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], axis=1)

        x = nn.Dropout(rate=self.dropout)(x, not train)
        x, out["encoder"] = Encoder(
            depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            dropout=self.dropout, scan=self.scan, remat_policy=self.remat_policy,
            dtype_mm=self.dtype_mm, name="Transformer")(x, deterministic=not train)
        encoded = out["encoded"] = x

        if self.pool_type == "map":
            x = out["head_input"] = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                                            dtype_mm=self.dtype_mm)(x)
        elif self.pool_type == "gap":
            x = out["head_input"] = jnp.mean(x, axis=1)
        elif self.pool_type == "0":
            x = out["head_input"] = x[:, 0]
        elif self.pool_type == "tok":
            x = out["head_input"] = x[:, 0]
            encoded = encoded[:, 1:]

        x_2d = jnp.reshape(encoded, [n, h, w, -1])
        if self.rep_size:
            rep_size = self.width if self.rep_size is True else self.rep_size
            hid = nn.Dense(rep_size, dtype=self.dtype_mm, name="pre_logits")
            x_2d = nn.tanh(hid(x_2d))
            x = nn.tanh(hid(x))
        out["pre_logits_2d"] = x_2d
        out["pre_logits"] = x

        if self.num_classes:
            kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
            head = nn.Dense(self.num_classes, dtype=self.dtype_mm, name="head", **kw)
            out["logits_2d"] = head(x_2d)
            x = out["logits"] = head(x)
        return x, out


# ---------------------------------------------------------------------------
# Checkpoint I/O: flat `.npz` archives with "/"-joined parameter paths.


def flatten(tree: Mapping) -> dict:
    """Nested dicts to {"a/b/c": leaf}, the key format of big_vision `.npz` checkpoints."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}/{k}": v for k, v in flatten(value).items()})
        else:
            flat[str(key)] = value
    return flat


def unflatten(flat: Mapping) -> dict:
    """Inverse of `flatten`."""
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name!r} nests under {part!r}, which is already a leaf")
        node[leaf] = value
    return tree


def _from_stored(arr):
    # numpy has no bfloat16, so .npz files store it as raw 2-byte voids.
    if arr.dtype.kind == "V" and arr.dtype.names is None:
        if arr.dtype.itemsize != 2:
            raise ValueError(f"cannot decode raw {arr.dtype} array (only bfloat16 is stored as void)")
        return arr.view(ml_dtypes.bfloat16)
    return arr


def _to_stored(arr):
    if arr.dtype == ml_dtypes.bfloat16:
        return arr.view("V2")
    if arr.dtype.kind not in "biufc":
        raise ValueError(f"cannot store dtype {arr.dtype} in a params .npz")
    return arr


def load_params(path) -> dict:
    """Reads a big_vision-style `.npz` into nested dicts. `file.npz:a/b` selects the subtree under `a/b/`.

    Never unpickles: object arrays raise ValueError.
    """
    path, subtree = os.fspath(path), None
    if not os.path.exists(path) and ":" in path:
        path, subtree = path.rsplit(":", 1)
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a checkpoint; expected a big_vision ViT .npz file.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        kind = "a single .npy array" if magic.startswith(b"\x93NUM") else "empty" if not magic else "not a zip archive"
        raise ValueError(f"{path} is not a big_vision .npz checkpoint ({kind}); expected an .npz of named "
                         "parameter arrays such as vit.save_params or big_vision write. Point to such a file, or "
                         "rebuild the shipped encoder with `python -m litlab.pretrain`.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            tree = unflatten({k: _from_stored(npz[k]) for k in npz.files})
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path} is a truncated or corrupt .npz checkpoint ({type(e).__name__}: {e}); copy "
                         "it again or rebuild it with `python -m litlab.pretrain`.") from None
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        raise ValueError(f"{path} holds pickled (object) arrays, which litlab never loads: a checkpoint "
                         "must hold plain numeric arrays only. Re-save it with vit.save_params.") from None
    for part in (subtree.split("/") if subtree else ()):
        if not isinstance(tree, dict) or part not in tree:
            raise ValueError(f"{path} has no subtree {subtree!r}; top level holds "
                             f"{sorted(tree) if isinstance(tree, dict) else 'a single array'}")
        tree = tree[part]
    return tree


def save_params(path, params: Mapping) -> None:
    """Writes `params` in the `load_params` layout, atomically.

    The data goes to a temp file in the target directory, which then replaces
    `path`. A crash mid-write never leaves a truncated checkpoint behind.
    """
    path = os.fspath(path)
    flat = {k: _to_stored(np.asarray(v)) for k, v in flatten(params).items()}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, arr in flat.items():
                    with zf.open(name + ".npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600. A shipped checkpoint should be readable.
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# Loading a checkpoint into a (possibly differently configured) model.

_BLOCK_RE = re.compile(r"encoderblock_(\d+)")


def pyloop_to_scan(params: Mapping) -> dict:
    """Stacks `Transformer/encoderblock_{i}` subtrees into one `Transformer/encoderblock`."""
    t = params["Transformer"]
    idx = sorted(int(m.group(1)) for k in t if (m := _BLOCK_RE.fullmatch(k)))
    if idx != list(range(len(idx))) or not idx:
        raise ValueError(f"expected Transformer/encoderblock_0..N-1, found indices {idx}")
    blocks = [t[f"encoderblock_{i}"] for i in idx]
    rest = {k: v for k, v in t.items() if not _BLOCK_RE.fullmatch(k)}
    stacked = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)
    return {**params, "Transformer": {**rest, "encoderblock": stacked}}


def scan_to_pyloop(params: Mapping) -> dict:
    """Splits the stacked `Transformer/encoderblock` into per-layer `encoderblock_{i}`."""
    t = dict(params["Transformer"])
    stacked = t.pop("encoderblock")
    depth = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(depth):
        t[f"encoderblock_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return {**params, "Transformer": t}


def _grid_side(num_tokens, shape):
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"pos_embedding {tuple(shape)} is not a square grid, so it cannot be "
                         "resampled; put 'pos_embedding' in dont_load to re-initialise it")
    return side


def resample_posemb(old, new):
    """Resizes a learned (1, N, D) posemb grid to the token count of `new`.

    Used to fine-tune at another resolution. The interpolation is linear with
    corners aligned (scipy.ndimage.zoom, order=1), as in big_vision, so
    resampled checkpoints match big_vision numerically.
    """
    if old.shape == new.shape:
        return old
    side_old, side_new = _grid_side(old.shape[1], old.shape), _grid_side(new.shape[1], new.shape)
    grid = np.asarray(old, np.float32).reshape(side_old, side_old, -1)
    zoom = side_new / side_old
    grid = scipy.ndimage.zoom(grid, (zoom, zoom, 1), order=1)
    return grid.reshape(1, side_new * side_new, -1).astype(old.dtype)


def _fold_cls_posemb(params):
    # Pre-2022 ViTs added the posemb after the cls token, so their posemb has
    # 1 + h*w rows. The first row belongs to the cls token: fold it into `cls`.
    pe = params.get("pos_embedding")
    if pe is None:
        return params
    n = pe.shape[1]
    if math.isqrt(n) ** 2 == n or math.isqrt(n - 1) ** 2 != n - 1:
        return params
    params = {**params, "pos_embedding": pe[:, 1:]}
    if "cls" in params:
        params["cls"] = params["cls"] + pe[:, :1]
    return params


def _listing(lines, limit=20):
    shown = "\n".join(f"  {line}" for line in lines[:limit])
    return shown + (f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else "")


def load(init_params, init_file, model_cfg, dont_load=()):
    """Loads a big_vision ViT checkpoint into the parameter tree `init_params`.

    Parameters whose path fully matches a regex in `dont_load` keep their
    value from `init_params`. Checkpoint entries that match are ignored. The
    scan/per-block layout follows `model_cfg.get("scan")`. A learned posemb
    of another grid size is resampled. Loaded values take the dtype of
    `init_params`. `init_params` may be a shape-only tree from
    `jax.eval_shape(model.init, ...)` when nothing is kept from it. With
    `init_params=None` the checkpoint is returned after these fixes and
    nothing is checked.
    """
    params = _fold_cls_posemb(load_params(init_file))
    t = params.get("Transformer", {})
    if model_cfg.get("scan") and any(_BLOCK_RE.fullmatch(k) for k in t):
        params = pyloop_to_scan(params)
    elif not model_cfg.get("scan") and "encoderblock" in t:
        params = scan_to_pyloop(params)
    if init_params is None:
        return params

    patterns = [re.compile(p) for p in dont_load]
    def skip(name):
        return any(p.fullmatch(name) for p in patterns)
    inited, loaded = flatten(init_params), flatten(params)

    if "pos_embedding" in inited and "pos_embedding" in loaded and not skip("pos_embedding"):
        loaded["pos_embedding"] = resample_posemb(loaded["pos_embedding"], inited["pos_embedding"])

    missing = [f"{k} (expected shape {tuple(v.shape)})" for k, v in inited.items()
               if k not in loaded and not skip(k)]
    if missing:
        raise ValueError(
            f"{init_file}: {len(missing)} model parameter(s) missing from the checkpoint:\n"
            f"{_listing(missing)}\nAdd regexes matching them to dont_load to keep their init "
            "values, or change the model config to match the checkpoint.")
    extra = [f"{k} (found shape {tuple(v.shape)})" for k, v in loaded.items()
             if k not in inited and not skip(k)]
    if extra:
        raise ValueError(
            f"{init_file}: {len(extra)} checkpoint parameter(s) unknown to the model:\n"
            f"{_listing(extra)}\nChange the model config (e.g. num_classes, pool_type, rep_size, "
            "scan) to match the checkpoint, or add them to dont_load to ignore them.")

    merged, mismatched = {}, []
    for name, init_value in inited.items():
        if skip(name):
            merged[name] = init_value
        elif tuple(loaded[name].shape) != tuple(init_value.shape):
            mismatched.append(f"{name}: expected shape {tuple(init_value.shape)}, "
                              f"found shape {tuple(loaded[name].shape)}")
        else:
            merged[name] = np.asarray(loaded[name]).astype(init_value.dtype)
    if mismatched:
        raise ValueError(
            f"{init_file}: {len(mismatched)} parameter shape mismatch(es) between model and "
            f"checkpoint:\n{_listing(mismatched)}\nChange the model config (width, mlp_dim, "
            "num_heads, patch_size, ...) to match the checkpoint, or add them to dont_load "
            "to keep their init values.")
    return unflatten(merged)
