"""Linear probes: what a frozen encoder's tokens say, read by fixed-recipe linear readers.

The decoder only ever sees frozen encoder tokens, so the probes check the thing that matters:

* objects_cls: the mean-pooled `encoded` tokens feed a softmax regression trained on the
  objects_cls train split, scored top-1 on its test split;
* reading (`--reading`): a linear CTC reader over the token columns (`litlab.reading`) is
  trained on the words train split and reads the test split and the held-out words of the
  compositional split (character accuracy and exact words).
* existence (`--existence`): a per-token linear classifier of the color-shape pair each token
  lies on, trained on the scenes train split; "is there a red circle?" is then answered by the
  max over tokens, scored as balanced accuracy on the test split: what the decoder's yes/no
  questions need, read without a decoder.
* position (`--position`): per-token linear classifiers of each token's row and column, on the
  scenes and words test splits: how much of where a token sits survives the encoder, which a
  decoder's attention (blind to token order) can only learn from the tokens.

Each is reported next to the same architecture at random init, which shows what pretraining bought.

    python -m litlab.probe --encoder data/encoder/vit_pretrained.npz [--reading | --existence | --position] [--config file.py[:arg]]
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from litlab import reading
from litlab.data import tasks
from litlab.models import vit
from litlab.pretrain import DEFAULT_CONFIG, preprocess


def features(params, model_cfg, images: np.ndarray, batch_size: int = 256, *, pool: bool = True) -> np.ndarray:
    """The `encoded` tokens (the decoder's input), float32 [n, tokens, width], or their mean
    [n, width] with `pool`."""
    model = vit.Model(**model_cfg)

    def encode(p, x):
        tokens = model.apply({"params": p}, preprocess(x))[1]["encoded"]
        return tokens.mean(1) if pool else tokens
    apply = jax.jit(encode)
    return np.concatenate([np.asarray(apply(params, images[i:i + batch_size]))
                           for i in range(0, len(images), batch_size)])


def fit_softmax(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int, lr: float,
                l2: float) -> tuple[jax.Array, jax.Array]:
    """Full-batch Adam on L2-regularised softmax regression; deterministic (zero init)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    tx = optax.adam(lr)

    def loss(wb):
        w, b = wb
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()
        return ce + l2 * jnp.sum(w * w)

    def body(carry, _):
        wb, opt = carry
        g = jax.grad(loss)(wb)
        upd, opt = tx.update(g, opt)
        return (optax.apply_updates(wb, upd), opt), None

    wb = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros(num_classes))
    (wb, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))((wb, tx.init(wb)))
    return wb


def _class_targets(split: tasks.TaskSplit) -> list[str]:
    return [turns[0][1] for turns in split.turns]


def linear_probe(params, model_cfg, *, train_limit: int | None = 5000, test_limit: int | None = 2000,
                 seed: int = 0, steps: int = 500, lr: float = 0.05, l2: float = 1e-4) -> dict:
    """Top-1 of a linear classifier on frozen mean-pooled features for objects_cls.

    Features are standardised with train statistics. Test classes never seen in train count as
    errors. Images come from the decoder's own objects_cls splits (seed `seed`).
    """
    train = tasks.load_task("objects_cls", "train", seed=seed, limit=train_limit)
    test = tasks.load_task("objects_cls", "test", seed=seed, limit=test_limit)
    f_train = features(params, model_cfg, train.images)[train.image_index]
    f_test = features(params, model_cfg, test.images)[test.image_index]
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd

    classes = sorted(set(_class_targets(train)))
    cid = {c: i for i, c in enumerate(classes)}
    y_train = np.array([cid[c] for c in _class_targets(train)])
    y_test = np.array([cid.get(c, -1) for c in _class_targets(test)])
    w, b = fit_softmax(f_train, y_train, len(classes), steps=steps, lr=lr, l2=l2)
    top1 = lambda f, y: float(np.mean(np.asarray(jnp.argmax(f @ w + b, -1)) == y))
    return {"train_top1": top1(f_train, y_train), "test_top1": top1(f_test, y_test),
            "num_classes": len(classes), "n_train": len(y_train), "n_test": len(y_test),
            "feature_dim": int(f_train.shape[1])}


def reading_probe(encode, side: int, *, resolution: int = 64, train_limit: int | None = 4000,
                  test_limit: int | None = 1000, seed: int = 0, steps: int = 2000, batch_size: int = 256,
                  lr: float = 3e-3, wd: float = 1e-4) -> dict:
    """Character accuracy and exact words of a linear CTC reader (`reading.CTCReader`) trained on
    frozen tokens of the words source's train split (seed `seed`), on its test split and on the
    compositional split (held-out words, never in train).

    `encode` maps uint8 images [n, R, R, 3] to row-major tokens [n, side*side, D] (for an
    encoder: `features(..., pool=False)`). Fixed recipe: tokens standardised with train statistics, AdamW (`lr`,
    `wd`) for `steps` minibatch steps drawn from PRNGKey(0), so encoders compare on equal terms.
    """
    data = {}
    for split, limit in (("train", train_limit), ("test", test_limit), ("compositional", test_limit)):
        images, records = tasks.read_records("words", split, seed=seed, resolution=resolution, limit=limit)
        data[split] = (np.asarray(encode(images), np.float32), [r["word"] for r in records])
    x_train, words = data["train"]
    mu, sd = x_train.mean((0, 1)), x_train.std((0, 1)) + 1e-6
    x = jnp.asarray((x_train - mu) / sd)
    labels = jnp.asarray(reading.ctc_labels(words, max(map(len, words))))
    reader = reading.CTCReader(side)
    p = reader.init(jax.random.PRNGKey(0), x[:1])
    tx = optax.adamw(lr, weight_decay=wd)

    @jax.jit
    def step(carry, key):
        p, opt = carry
        idx = jax.random.choice(key, len(x), (min(batch_size, len(x)),), replace=False)
        g = jax.grad(lambda p: reading.ctc_loss(reader.apply(p, x[idx]), labels[idx]).mean())(p)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), None

    carry = (p, tx.init(p))
    for key in tqdm(jax.random.split(jax.random.PRNGKey(0), steps), desc="reading probe", leave=False):
        carry, _ = step(carry, key)
    read = jax.jit(reader.apply)
    out = {"n_train": len(words), "steps": steps}
    for split in ("train", "test", "compositional"):
        feats, truth = data[split]
        logits = np.concatenate([np.asarray(read(carry[0], jnp.asarray((feats[i:i + 512] - mu) / sd)))
                                 for i in range(0, len(feats), 512)])
        out[split] = reading.reading_scores(reading.ctc_decode(logits), truth)
    return out


def _balanced_accuracy(present: np.ndarray, truth: np.ndarray) -> float:
    """Mean over labels (columns) with both outcomes in `truth` of (recall on yes + recall on no) / 2:
    chance is 0.5 whatever the base rates, as in the benchmark's balanced yes/no questions."""
    accs = [(present[truth[:, j], j].mean() + (~present[~truth[:, j], j]).mean()) / 2
            for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < len(truth)]
    return float(np.mean(accs))


def existence_probe(encode, patch: int, *, resolution: int = 64, train_limit: int | None = 4000,
                    test_limit: int | None = 1000, seed: int = 0, steps: int = 600, lr: float = 1e-2,
                    l2: float = 1e-5) -> dict:
    """Whether frozen tokens answer "is there a <color> <shape>?" and "are there any <shape>s?".

    A softmax regression labels each token with the color-shape pair of the object whose box holds
    it (or none), trained on the scenes train split (seed `seed`); an image has a pair when some
    token gives it probability > 0.5 (a shape: any of its pairs). Reports per-token top-1 and the
    balanced accuracy of both answers on the test split, whose pairs are all seen in train (held-out
    pairs live in the compositional split). `encode` maps uint8 images [n, R, R, 3] to row-major
    tokens [n, (R/patch)^2, D].
    """
    from litlab.pretrain import patch_objects

    data = {}
    for split, limit in (("train", train_limit), ("test", test_limit)):
        images, records = tasks.read_records("scenes", split, seed=seed, resolution=resolution, limit=limit)
        data[split] = (np.asarray(encode(images), np.float32), [r["objects"] for r in records])
    pairs = sorted({(o["color"], o["shape"]) for objects in data["train"][1] for o in objects})
    index = {p: i + 1 for i, p in enumerate(pairs)}  # 0: no object

    def token_labels(all_objects):
        return np.stack([np.array([0] + [index.get((o["color"], o["shape"]), -1) for o in objects])[
            patch_objects(objects, resolution, patch)] for objects in all_objects])

    x_train, objects = data["train"]
    mu, sd = x_train.mean((0, 1)), x_train.std((0, 1)) + 1e-6
    standard = lambda x: ((x - mu) / sd).reshape(-1, x.shape[-1])
    w, b = fit_softmax(standard(x_train), token_labels(objects).reshape(-1), len(pairs) + 1, steps=steps, lr=lr, l2=l2)
    x_test, objects = data["test"]
    logits = np.asarray(standard(x_test) @ w + b).reshape(len(x_test), -1, len(pairs) + 1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    labels = token_labels(objects)
    pair_score = probs[..., 1:].max(1)  # [images, pairs]
    truth = np.array([[p in {(o["color"], o["shape"]) for o in objs} for p in pairs] for objs in objects])
    shapes = sorted({s for _, s in pairs})
    of_shape = [[i for i, (_, s) in enumerate(pairs) if s == shape] for shape in shapes]
    shape_score = np.stack([pair_score[:, cols].max(1) for cols in of_shape], 1)
    shape_truth = np.stack([truth[:, cols].any(1) for cols in of_shape], 1)
    known = labels >= 0
    return {"n_train": len(x_train), "n_test": len(x_test), "pairs": len(pairs), "steps": steps,
            "token_top1": float((logits.argmax(-1) == labels)[known].mean()),
            "color_shape_present": _balanced_accuracy(pair_score > 0.5, truth),
            "shape_present": _balanced_accuracy(shape_score > 0.5, shape_truth)}


def position_probe(encode, side: int, *, resolution: int = 64, train_limit: int | None = 1000,
                   test_limit: int | None = 300, seed: int = 0, steps: int = 300, lr: float = 5e-2,
                   l2: float = 1e-4) -> dict:
    """Top-1 of softmax regressions that name each token's row and column (chance 1/side) from its
    frozen features, per source (scenes, words), trained on its train split and scored on its test
    split. `encode` maps uint8 images [n, R, R, 3] to row-major tokens [n, side*side, D]."""
    out = {"steps": steps, "chance": 1 / side}
    for source in ("scenes", "words"):
        x = {}
        for split, limit in (("train", train_limit), ("test", test_limit)):
            images, _ = tasks.read_records(source, split, seed=seed, resolution=resolution, limit=limit)
            x[split] = np.asarray(encode(images), np.float32)
        mu, sd = x["train"].mean((0, 1)), x["train"].std((0, 1)) + 1e-6
        flat = {k: ((v - mu) / sd).reshape(-1, v.shape[-1]) for k, v in x.items()}
        where = {"row": np.arange(side * side) // side, "column": np.arange(side * side) % side}
        res = {"n_train": len(x["train"]), "n_test": len(x["test"])}
        for name, label in where.items():
            w, b = fit_softmax(flat["train"], np.tile(label, len(x["train"])), side, steps=steps, lr=lr, l2=l2)
            pred = np.asarray(jnp.argmax(flat["test"] @ w + b, -1))
            res[f"{name}_top1"] = float(np.mean(pred == np.tile(label, len(x["test"]))))
        out[source] = res
    return out


def main(argv=None) -> None:
    from absl import flags
    from ml_collections import config_flags

    argv = sys.argv if argv is None else ["litlab.probe", *argv]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "config whose `model` is the encoder",
                                    flag_values=fv, sys_argv=argv)
    flags.DEFINE_string("encoder", None, "pretrained encoder .npz", flag_values=fv, required=True)
    flags.DEFINE_integer("train_limit", 5000, "objects_cls train images", flag_values=fv)
    flags.DEFINE_integer("test_limit", 2000, "objects_cls test images", flag_values=fv)
    flags.DEFINE_integer("random_seed", 0, "init seed of the random-init baseline", flag_values=fv)
    flags.DEFINE_bool("reading", False, "run the reading probe (words) instead of the objects_cls one",
                      flag_values=fv)
    flags.DEFINE_bool("existence", False, "run the existence probe (scenes) instead of the objects_cls one",
                      flag_values=fv)
    flags.DEFINE_bool("position", False, "run the token position probe (scenes, words) instead of the "
                      "objects_cls one", flag_values=fv)
    fv(argv)
    if fv.reading + fv.existence + fv.position > 1:
        raise SystemExit("error: --reading, --existence and --position are separate probes; pass one of them.")

    model_cfg = fv.config.model
    if fv.position and model_cfg.patch_size[0] != model_cfg.patch_size[1]:
        raise SystemExit(f"error: --position needs a square token grid; the config's model.patch_size is "
                         f"{tuple(model_cfg.patch_size)}.")
    res = fv.config.data.resolution
    init = vit.Model(**model_cfg).init(jax.random.PRNGKey(fv.random_seed), jnp.zeros((1, res, res, 3)))
    pretrained = vit.load(init["params"], fv.encoder, model_cfg)
    if fv.reading:
        side = res // model_cfg.patch_size[1]
        probe = lambda p: reading_probe(lambda x: features(p, model_cfg, x, pool=False), side, resolution=res)
    elif fv.existence:
        probe = lambda p: existence_probe(lambda x: features(p, model_cfg, x, pool=False),
                                          model_cfg.patch_size[0], resolution=res)
    elif fv.position:
        probe = lambda p: position_probe(lambda x: features(p, model_cfg, x, pool=False),
                                         res // model_cfg.patch_size[0], resolution=res)
    else:
        probe = lambda p: linear_probe(p, model_cfg, train_limit=fv.train_limit, test_limit=fv.test_limit)
    name = "reading" if fv.reading else "existence" if fv.existence else "position" if fv.position else "objects_cls"
    report = {"encoder": os.fspath(fv.encoder), "probe": name,
              "pretrained": probe(pretrained), "random_init": probe(init["params"])}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
