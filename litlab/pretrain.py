"""Pretrains litlab's own ViT encoder, the offline stand-in for a JFT/ImageNet checkpoint.

The paper's decoders sit on a frozen ViT pretrained with JFT-style multi-label sigmoid
classification. Offline we do the same on the embedded benchmark: every image gets the set of
labels its annotation implies (shapes, colors, sizes and their conjunctions, object count, which
3x3 cells hold objects of which color/shape, letters and letter positions of rendered words), and
a linear `head` on the mean-pooled tokens is trained with sigmoid cross-entropy. The same head
also scores every token against the labels of the object under it (`dense_weight`), which
teaches the tokens themselves, the decoder's input, much faster on a CPU budget. Reading is
taught per token too (`litlab.reading`): a linear head names the letters whose glyph centers
each token holds (`glyph_weight`), and/or a linear CTC reader spells each words image from the
token columns (`ctc_weight`). Only the encoder is kept; the decoder reads its `encoded` tokens.

A run lives in a workdir: checkpoints every `checkpoint_every` steps, and rerunning the same
command resumes exactly (the batch order is a pure function of seed and step), so a long run
can outlive a session. `config.init` starts from any big_vision ViT `.npz` (continued pretraining).

    python -m litlab.pretrain --config litlab/configs/pretrain_encoder.py[:smoke]
        --workdir DIR [--config.total_steps=N] [--out PATH]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import string
import sys
from pathlib import Path
import time
from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
from tqdm.auto import tqdm

from litlab import checkpoints, reading
from litlab.data import scenes, tasks
from litlab.models import vit

GRID = 3  # object positions are labelled by the cell of a GRID x GRID grid holding their center
MAX_COUNT = 4  # scenes hold 1-4 objects, words images none
MAX_WORD = 8  # longest word the benchmark renders
CHARS = string.ascii_lowercase
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "pretrain_encoder.py")


def _seen_pairs() -> list[tuple[str, str]]:
    return [(c, s) for c in scenes.COLORS for s in scenes.SHAPES if (c, s) not in scenes.HELD_OUT_PAIRS]


@functools.cache
def label_names() -> tuple[str, ...]:
    """The label vocabulary: "<group>/<value>" strings, one per output of the head.

    Held-out color-shape pairs have no label, so `multi_hot` fails loudly should one ever leak
    into the encoder's data instead of silently training on it.
    """
    pairs = _seen_pairs()
    cells = range(GRID * GRID)
    positions = range(MAX_WORD)
    groups = {
        "shape": list(scenes.SHAPES),
        "color": list(scenes.COLORS),
        "size": list(scenes.SIZES),
        "color_shape": [f"{c} {s}" for c, s in pairs],
        "size_color": [f"{z} {c}" for z in scenes.SIZES for c in scenes.COLORS],
        "size_shape": [f"{z} {s}" for z in scenes.SIZES for s in scenes.SHAPES],
        "class": [f"{z} {c} {s}" for z in scenes.SIZES for c, s in pairs],
        "count": [str(n) for n in range(MAX_COUNT + 1)],
        "cell": [str(i) for i in cells],
        "cell_color": [f"{i} {c}" for i in cells for c in scenes.COLORS],
        "cell_shape": [f"{i} {s}" for i in cells for s in scenes.SHAPES],
        "char": list(CHARS),
        "char_at": [f"{p} {ch}" for p in positions for ch in CHARS],
        "char_from_end": [f"{p} {ch}" for p in positions for ch in CHARS],
        "length": [str(n) for n in range(1, MAX_WORD + 1)],
    }
    return tuple(f"{g}/{v}" for g, values in groups.items() for v in values)


@functools.cache
def label_index() -> Mapping[str, int]:
    return {name: i for i, name in enumerate(label_names())}


def label_groups() -> dict[str, np.ndarray]:
    """Group name -> indices of its labels (for per-group metrics)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(label_names()):
        groups.setdefault(name.split("/", 1)[0], []).append(i)
    return {g: np.asarray(idx) for g, idx in groups.items()}


def _cell(center: tuple[float, float]) -> int:
    col, row = (min(int(v * GRID), GRID - 1) for v in center)  # center is (x, y) in [0, 1)
    return row * GRID + col


def word_labels(word: str) -> set[str]:
    out = {f"length/{len(word)}"}
    for p, ch in enumerate(word):
        out |= {f"char/{ch}", f"char_at/{p} {ch}"}
    for p, ch in enumerate(reversed(word)):
        out.add(f"char_from_end/{p} {ch}")
    return out


def object_labels(obj: Mapping) -> set[str]:
    """What one object contributes: its attributes, their conjunctions, its cell, its word."""
    z, c, s, cell = obj["size"], obj["color"], obj["shape"], _cell(obj["center"])
    out = {f"shape/{s}", f"color/{c}", f"size/{z}", f"color_shape/{c} {s}", f"size_color/{z} {c}",
           f"size_shape/{z} {s}", f"class/{z} {c} {s}", f"cell/{cell}", f"cell_color/{cell} {c}",
           f"cell_shape/{cell} {s}"}
    return out | word_labels(obj["word"]) if obj.get("word") else out


def record_labels(record: Mapping) -> set[str]:
    """The label names an annotation implies (a record from `scenes.SOURCES[...].get`)."""
    objects = record.get("objects", [])
    out = {f"count/{len(objects)}"}.union(*map(object_labels, objects))
    return out | word_labels(record["word"]) if record.get("word") else out


def _multi_hot(names: set[str], what) -> np.ndarray:
    index = label_index()
    unknown = sorted(n for n in names if n not in index)
    if unknown:
        raise KeyError(f"labels {unknown} of {what} are not in the vocabulary "
                       "(a held-out pair or an unexpected word leaked into the data?)")
    y = np.zeros(len(index), np.uint8)
    y[[index[n] for n in names]] = 1
    return y


def multi_hot(records: Iterable[Mapping]) -> np.ndarray:
    """uint8 [n, num_labels] image-level targets; raises on a label outside the vocabulary."""
    return np.stack([_multi_hot(record_labels(r), r.get("image_key", f"record {i}"))
                     for i, r in enumerate(records)]).reshape(-1, len(label_names()))


def patch_objects(objects: list[Mapping], resolution: int, patch: int) -> np.ndarray:
    """int8 [tokens]: 1 + the index of the object whose box holds the patch center, 0 for none
    (boxes never overlap), in the row-major token order of the ViT."""
    side = resolution // patch
    c = (np.arange(side) + 0.5) * patch
    owner = np.zeros((side, side), np.int8)
    for k, o in enumerate(objects):
        x0, y0, x1, y1 = o["bbox"]
        owner[np.ix_((c >= y0) & (c < y1), (c >= x0) & (c < x1))] = k + 1
    return owner.reshape(-1)


def dense_label_mask(source: str) -> np.ndarray:
    """Which labels the per-token loss supervises on images of `source`: everything an object
    owns, but not the count (a property of the image), and no letters on words images (their
    glyph positions are not annotated)."""
    skip = {"count"} | ({"char", "char_at", "char_from_end", "length"} if source == "words" else set())
    return np.array([n.split("/", 1)[0] not in skip for n in label_names()], np.uint8)


def source_counts(weights: dict[str, float], size: int) -> dict[str, int]:
    """Images per source: proportional to the weights, at least one each, summing to `size`
    (largest remainders round; rounding each share alone could leave the pool short of a batch)."""
    bad = {k: w for k, w in weights.items() if not w > 0}
    if bad:
        raise ValueError(f"data.sources weights must be positive; got {bad} (drop a source to leave it out)")
    if size < len(weights):
        raise ValueError(f"a pool of {size} images cannot hold one image of each of the "
                         f"{len(weights)} sources {sorted(weights)}; raise data.pool_size")
    total = sum(weights.values())
    exact = {k: 1 + (size - len(weights)) * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[:size - sum(counts.values())]:
        counts[k] += 1
    return counts


def build_pool(data_cfg, split: str, size: int, patch: int) -> dict[str, np.ndarray]:
    """`size` images of each source's `split`, shared out by the configured weights.

    Returns images uint8 [n,R,R,3], image-level `labels` uint8 [n,L], per-token targets as
    `objects` uint8 [n,1+MAX_COUNT,L] (row 0: no object) indexed by `patch_obj` int8 [n,tokens],
    `dense_mask` uint8 [n,L], per-token letters `glyphs` int8 [n,tokens,reading.SLOTS], the CTC
    reader's `spelling` int32 [n,MAX_WORD] (-1 padded; all -1 unless a words image), and for the
    readable checks each image's `origin` (source) and `word` ("" unless from the words source).
    """
    parts = []
    for name, n in source_counts(dict(data_cfg.sources), size).items():
        imgs, recs = tasks.read_records(name, split, seed=data_cfg.seed,
                                        resolution=data_cfg.resolution, limit=n)
        words = [r["word"] if name == "words" else "" for r in recs]
        objects = np.zeros((len(recs), 1 + MAX_COUNT, len(label_names())), np.uint8)
        for i, r in enumerate(recs):
            for k, o in enumerate(r.get("objects", [])):
                objects[i, k + 1] = _multi_hot(object_labels(o), r["image_key"])
        parts.append({
            "images": imgs, "labels": multi_hot(recs), "objects": objects,
            "patch_obj": np.stack([patch_objects(r.get("objects", []), data_cfg.resolution, patch)
                                   for r in recs]),
            "dense_mask": np.tile(dense_label_mask(name), (len(recs), 1)),
            "glyphs": np.stack([reading.glyph_targets(reading.record_glyphs(r), data_cfg.resolution, patch,
                                                      r["image_key"]) for r in recs]),
            "spelling": reading.ctc_labels(words, MAX_WORD),
            "origin": np.asarray([name] * len(recs)),
            "word": np.asarray(words),
        })
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def preprocess(images):
    """uint8 [..., 3] -> float32 in [-1, 1], the encoder's input convention."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


# --------------------------------------------------------------------------------------------
# Metrics


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Area under the precision-recall curve of one label (targets must hold a positive)."""
    t = targets[np.argsort(-scores, kind="stable")].astype(np.float64)
    precision = np.cumsum(t) / np.arange(1, len(t) + 1)
    return float((precision * t).sum() / t.sum())


TOKEN_GROUPS = ("class", "color", "shape")


def validation_metrics(logits: np.ndarray, token_pred: Mapping[str, np.ndarray],
                       glyph_pred: np.ndarray, ctc_logits: np.ndarray, val: Mapping) -> dict:
    """Per-group mAP (labels with a positive only) and micro-F1 at 0.5, overall mAP, and readable
    checks: top-1 of the 'class' labels on single-object images, per-token top-1 of
    class/color/shape on the tokens an object owns (what the decoder's cross-attention sees),
    the glyph head's top-1 on the letter slots (`glyph_letter_top1`) and on all slots, and the
    CTC reader's exact words and character accuracy on words images.

    `token_pred[g]` holds each token's argmax within group g, int [n, tokens]; `glyph_pred` the
    glyph head's argmax, int [n, tokens, SLOTS].
    """
    targets, origin = val["labels"], val["origin"]
    probs = 1 / (1 + np.exp(-logits))
    has_pos = targets.sum(0) > 0
    aps = np.full(targets.shape[1], np.nan)
    for j in np.flatnonzero(has_pos):
        aps[j] = average_precision(logits[:, j], targets[:, j])
    out = {"mAP": float(np.nanmean(aps))}
    pred = probs >= 0.5
    groups = label_groups()
    for g, idx in groups.items():
        tp = (pred[:, idx] & (targets[:, idx] == 1)).sum()
        denom = pred[:, idx].sum() + targets[:, idx].sum()
        out[f"{g}/mAP"] = float(np.nanmean(aps[idx])) if has_pos[idx].any() else float("nan")
        out[f"{g}/F1"] = float(2 * tp / denom) if denom else float("nan")
    single = origin == "objects"
    if single.any():
        cls = groups["class"]
        hit = targets[single][:, cls][np.arange(single.sum()), logits[single][:, cls].argmax(1)]
        out["objects_class_top1"] = float(hit.mean())
    letters = val["glyphs"] != reading.NO_LETTER
    if letters.any():
        out["glyph_letter_top1"] = float((glyph_pred == val["glyphs"])[letters].mean())
        out["glyph_slot_top1"] = float((glyph_pred == val["glyphs"]).mean())
    is_word = origin == "words"
    if is_word.any():
        scores = reading.reading_scores(reading.ctc_decode(ctc_logits[is_word]), list(val["word"][is_word]))
        out["words_exact"], out["words_char_accuracy"] = scores["exact_word"], scores["char_accuracy"]
    owned = val["patch_obj"] > 0
    if owned.any():
        rows = np.broadcast_to(np.arange(len(owned))[:, None], owned.shape)[owned]
        owner_labels = val["objects"][rows, val["patch_obj"][owned]]  # [owned tokens, L]
        for g in TOKEN_GROUPS:
            hit = owner_labels[:, groups[g]][np.arange(len(rows)), token_pred[g][owned]]
            out[f"token_{g}_top1"] = float(hit.mean())
    return out


# --------------------------------------------------------------------------------------------
# Training


class Pretrainer(nn.Module):
    """The ViT with its label `head` (params["encoder"]), a linear glyph head naming each token's
    letters (params["glyph"]) and a linear CTC reader over token columns (params["ctc"]).
    Both reading heads are linear on purpose: the tokens must say the letters themselves."""

    encoder: vit.Model
    side: int

    @nn.compact
    def __call__(self, images, *, train=False):
        logits, out = self.encoder(images, train=train)
        tokens = out["encoded"]
        glyph = nn.Dense(reading.SLOTS * (len(CHARS) + 1), name="glyph")(tokens)
        glyph = glyph.reshape(*tokens.shape[:2], reading.SLOTS, len(CHARS) + 1)
        return logits, out, glyph, reading.CTCReader(self.side, name="ctc")(tokens)


def make_model(model_cfg, resolution: int, num_classes: int | None = None) -> Pretrainer:
    return Pretrainer(encoder=vit.Model(num_classes=num_classes, **model_cfg),
                      side=resolution // model_cfg.patch_size[1])


def make_optimizer(config) -> optax.GradientTransformation:
    # Clamped so that a short override (--config.total_steps=2) still leaves a decay phase.
    warmup = min(config.warmup_steps, config.total_steps - 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, config.total_steps, end_value=0.0)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # no decay on biases/LN
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm),
                       optax.adamw(schedule, weight_decay=config.wd, mask=decay_mask))


def init_params(model: Pretrainer, config, label_prior: np.ndarray) -> dict:
    """Random init (or the encoder body from `config.init`), with the head bias at the labels'
    log prior odds: most of ~1k labels are absent from any one image, and starting from p=0.5
    spends the first steps learning only that."""
    params = model.init(jax.random.PRNGKey(config.seed),
                        jnp.zeros((1, config.data.resolution, config.data.resolution, 3)))["params"]
    if config.init:
        params["encoder"] = vit.load(params["encoder"], config.init, config.model, dont_load=("head/.*",))
    p = np.clip(label_prior, 1e-4, 1 - 1e-4)
    params["encoder"]["head"]["bias"] = jnp.asarray(np.log(p / (1 - p)), jnp.float32)
    return params


TRAIN_KEYS = ("images", "labels", "objects", "patch_obj", "dense_mask", "glyphs", "spelling")


def loss_fn(model, weights: tuple[float, float, float], params, batch):
    """Image-level sigmoid cross-entropy, plus `dense_weight` times the same loss per token,
    plus `glyph_weight` times the glyph head's cross-entropy (summed over tokens and slots, like
    the labels: averaged over tokens, a words image's ~7 letters among 192 slots weighed nothing
    next to the label terms and the head learned only "no letter"), plus `ctc_weight` times the CTC reader's loss (averaged over the batch's words
    images).

    The label terms are summed over labels and averaged over images (and tokens), as big_vision's
    sigmoid_xent. The per-token term runs the same head on every token (`logits_2d`) against
    the labels of the object under it: the decoder reads tokens, not the pooled vector, and
    64 labelled tokens per image teach far more per step than one pooled label set.
    """
    dense_weight, glyph_weight, ctc_weight = weights
    logits, out, glyph_logits, ctc_logits = model.apply({"params": params}, preprocess(batch["images"]), train=True)
    bce = optax.sigmoid_binary_cross_entropy
    image = bce(logits, batch["labels"].astype(jnp.float32)).sum(-1).mean()
    dense = token_loss(logits, out, batch) if dense_weight else jnp.zeros(())
    glyph = (optax.softmax_cross_entropy_with_integer_labels(
        glyph_logits, batch["glyphs"].astype(jnp.int32)).sum((1, 2)).mean() if glyph_weight else jnp.zeros(()))
    if ctc_weight:
        spelling = batch["spelling"]
        readable = (spelling[:, 0] >= 0).astype(jnp.float32)
        ctc = (reading.ctc_loss(ctc_logits, spelling) * readable).sum() / jnp.maximum(readable.sum(), 1.0)
    else:
        ctc = jnp.zeros(())
    total = image + dense_weight * dense + glyph_weight * glyph + ctc_weight * ctc
    return total, {"image": image, "dense": dense, "glyph": glyph, "ctc": ctc}


def token_loss(logits, out, batch):
    """The label loss per token against the object under it, masked per source (`dense_mask`)."""
    b, num_labels = logits.shape
    token_logits = out["logits_2d"].reshape(b, -1, num_labels)
    owner = batch["patch_obj"].astype(jnp.int32)
    targets = jax.vmap(lambda objs, own: objs[own])(batch["objects"], owner).astype(jnp.float32)
    mask = batch["dense_mask"][:, None, :].astype(jnp.float32)
    return (optax.sigmoid_binary_cross_entropy(token_logits, targets) * mask).sum(-1).mean()


def make_train_step(model, tx, weights: tuple[float, float, float]):
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model, weights), has_aux=True)

    def step(state, batch):
        params, opt_state = state
        (loss, parts), grads = grad_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **parts}
    return jax.jit(step, donate_argnums=0)


def predict(model, params, images: np.ndarray, batch_size: int = 256):
    """Image logits [n, L]; per TOKEN_GROUPS group, each token's argmax [n, tokens]; the glyph
    head's argmax [n, tokens, SLOTS]; and the CTC reader's logits [n, frames, 27]."""
    groups = {g: jnp.asarray(label_groups()[g]) for g in TOKEN_GROUPS}

    @jax.jit
    def apply(p, x):
        logits, out, glyph, ctc = model.apply({"params": p}, preprocess(x))
        tokens = out["logits_2d"].reshape(len(x), -1, logits.shape[-1])
        return logits, {g: tokens[..., idx].argmax(-1) for g, idx in groups.items()}, glyph.argmax(-1), ctc

    parts = [apply(params, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return (np.concatenate([np.asarray(p[0]) for p in parts]),
            {g: np.concatenate([np.asarray(p[1][g]) for p in parts]) for g in groups},
            np.concatenate([np.asarray(p[2]) for p in parts]),
            np.concatenate([np.asarray(p[3]) for p in parts]))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of batch `step`: epochs walk seeded permutations of the pool, so the data order
    is a pure function of (seed, step)."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"pool of {n} images is smaller than batch_size {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def encoder_params(params: Mapping, dtype: str = "float32") -> dict:
    """The encoder's params without the label `head` (and without the reading heads), cast to
    the storage dtype."""
    cast = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    body = {k: v for k, v in params["encoder"].items() if k != "head"}
    return jax.tree.map(lambda a: np.asarray(a).astype(cast), body)


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _config_json(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)


def train(config, *, workdir: str | None = None, out: str | None = None, progress: bool = True):
    """Runs (or resumes) the pretraining; returns (encoder params without head, summary dict).

    With a `workdir`, the state is checkpointed every `config.checkpoint_every` steps and a rerun
    resumes from the newest checkpoint: the same batches follow, so the result is the one an
    uninterrupted run gives. A workdir made with another config is refused (nothing is mixed).
    Saves the encoder to `out` (default config.out; "" saves nothing) in big_vision `.npz`
    layout. Validation runs every config.eval_every steps (0: only at the end).
    """
    out = config.out if out is None else out
    if workdir is None:
        return _train(config, None, out, progress)
    workdir = Path(workdir)
    with checkpoints.workdir_lock(workdir):
        saved = workdir / "config.json"
        if saved.is_file() and saved.read_text() != _config_json(config):
            raise ValueError(f"{workdir} holds a pretraining run with another config ({saved}); pass a new "
                             "--workdir, or rerun with that config to resume it.")
        checkpoints.write_atomic(saved, _config_json(config))
        return _train(config, workdir, out, progress)


def _train(config, workdir: Path | None, out: str, progress: bool):
    t0 = time.time()
    patch = config.model.patch_size[0]
    pool = build_pool(config.data, "train", config.data.pool_size, patch)
    val = build_pool(config.data, "val", config.data.val_size, patch)
    data_s = time.time() - t0

    model = make_model(config.model, config.data.resolution, num_classes=len(label_names()))
    tx = make_optimizer(config)
    params = init_params(model, config, pool["labels"].mean(0))
    state = (params, tx.init(params))
    step_fn = make_train_step(model, tx, (config.dense_weight, config.glyph_weight, config.ctc_weight))

    log = {"loss": [], "val": [], "train_s": 0.0}
    start, ckpt = 0, None
    if workdir is not None:
        ckpt = checkpoints.Checkpointer(workdir, keep=2)
        restored, step = ckpt.restore(jax.tree.map(np.asarray, state))
        if restored is not None:
            state, start = jax.tree.map(jnp.asarray, restored), step
            log = json.loads((workdir / "log.json").read_text())
            log["loss"] = [r for r in log["loss"] if r["step"] <= start]
            log["val"] = [r for r in log["val"] if r["step"] <= start]

    t1, train_s0 = time.time(), log["train_s"]
    bar = tqdm(range(start, config.total_steps), desc="pretrain", initial=start, total=config.total_steps,
               disable=not progress)
    for step in bar:
        idx = batch_indices(len(pool["images"]), config.batch_size, step, config.seed)
        state, loss = step_fn(state, {k: pool[k][idx] for k in TRAIN_KEYS})
        done = step + 1
        if done % config.log_every == 0 or done == config.total_steps:
            log["loss"].append({"step": done, **{k: round(float(v), 4) for k, v in loss.items()}})
            bar.set_postfix(loss=f"{log['loss'][-1]['loss']:.3f}")
        if done == config.total_steps or (config.eval_every and done % config.eval_every == 0):
            metrics = validation_metrics(*predict(model, state[0], val["images"]), val=val)
            log["val"].append({"step": done, **metrics})
            if progress:
                bar.write(f"step {done}: val mAP {metrics['mAP']:.3f}, objects class top-1 "
                          f"{metrics.get('objects_class_top1', float('nan')):.3f}, token shape top-1 "
                          f"{metrics.get('token_shape_top1', float('nan')):.3f}, glyph letters "
                          f"{metrics.get('glyph_letter_top1', float('nan')):.3f}, CTC words exact "
                          f"{metrics.get('words_exact', float('nan')):.3f}", file=sys.stderr)
        if ckpt is not None and (done % config.checkpoint_every == 0 or done == config.total_steps):
            log["train_s"] = round(train_s0 + time.time() - t1, 1)
            ckpt.save(done, jax.tree.map(np.asarray, state))
            checkpoints.write_atomic(workdir / "log.json", json.dumps(log))
    if ckpt is not None:
        ckpt.close()
    log["train_s"] = round(train_s0 + time.time() - t1, 1)

    enc = encoder_params(state[0], config.save_dtype)
    summary = {
        "steps": config.total_steps, "batch_size": config.batch_size, "resumed_from": start,
        "images_seen": config.total_steps * config.batch_size, "pool_size": len(pool["images"]),
        "val_size": len(val["images"]), "num_labels": len(label_names()), "init": config.init,
        "encoder_params": int(sum(a.size for a in jax.tree.leaves(enc))),
        "data_s": round(data_s, 1), "train_s": log["train_s"], "loss": log["loss"], "val": log["val"],
    }
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        vit.save_params(out, enc)
        summary.update(out=out, bytes=os.path.getsize(out), sha256=sha256(out))
    return enc, summary


def main(argv=None) -> None:
    from absl import flags
    from ml_collections import config_flags

    argv = sys.argv if argv is None else ["litlab.pretrain", *argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "config file, file.py[:arg]",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("out", None, "where to save the encoder .npz (default: config.out)",
                        flag_values=fv)
    flags.DEFINE_string("workdir", None, "checkpoints and log; rerun with the same one to resume",
                        flag_values=fv)
    fv(argv)
    _, summary = train(fv.config, workdir=fv.workdir, out=fv.out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
