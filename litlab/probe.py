"""Linear probe: how much of the objects_cls class is linearly readable from frozen features.

The decoder only ever sees frozen encoder tokens, so the probe checks the thing that matters:
the mean-pooled `encoded` tokens of the frozen encoder feed a softmax regression trained on the
objects_cls train split, scored top-1 on its test split. Comparing with the same architecture at
random init shows what pretraining bought.

    python -m litlab.probe --encoder data/encoder/vit_pretrained.npz [--config file.py[:arg]]
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from litlab.data import tasks
from litlab.models import vit
from litlab.pretrain import DEFAULT_CONFIG, preprocess


def features(params, model_cfg, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Mean over the `encoded` tokens (the decoder's input), float32 [n, width]."""
    model = vit.Model(**model_cfg)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, preprocess(x))[1]["encoded"].mean(1))
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
    fv(argv)

    model_cfg = fv.config.model
    res = fv.config.data.resolution
    init = vit.Model(**model_cfg).init(jax.random.PRNGKey(fv.random_seed), jnp.zeros((1, res, res, 3)))
    pretrained = vit.load(init["params"], fv.encoder, model_cfg)
    kw = dict(train_limit=fv.train_limit, test_limit=fv.test_limit)
    report = {"encoder": os.fspath(fv.encoder),
              "pretrained": linear_probe(pretrained, model_cfg, **kw),
              "random_init": linear_probe(init["params"], model_cfg, **kw)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
