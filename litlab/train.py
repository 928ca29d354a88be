"""Training the LiT-decoder: one code path behind the CLI and the notebooks.

    python -m litlab.train --config litlab/configs/quickstart.py[:smoke] --workdir DIR [--config.KEY=V]

The step is one jitted function with the train state donated; the loss covers target tokens
only. With a frozen encoder, image tokens come from the feature cache, so the encoder never runs
during training. Checkpoints are atomic and the data stream is a pure function of the step, so
a killed run restarted with the same command continues exactly where its last checkpoint was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import sys
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from litlab import checkpoints, features, freeze, sharding
from litlab.configs import quickstart
from litlab.data import mixtures, pipeline, tasks
from litlab.data.tokenizer import Tokenizer
from litlab.models import lit_decoder, vit

ROOT = Path(__file__).resolve().parents[1]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


def _flat_keys(cfg, prefix="") -> set[str]:
    keys = set()
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        keys.add(name)
        # encoder.model holds free-form ViT constructor arguments.
        if isinstance(v, (ml_collections.ConfigDict, dict)) and name != "encoder.model":
            keys |= _flat_keys(v, name + ".")
    return keys


def check_config(config) -> None:
    """Unknown keys fail at start, naming the valid keys closest to each."""
    valid = _flat_keys(quickstart.get_config())
    unknown = sorted(_flat_keys(config) - valid)
    if unknown:
        hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, valid, 3, 0.5) or 'none'}?)"
                 for k in unknown]
        raise ValueError(f"unknown config key(s): {', '.join(hints)}. Valid keys: {sorted(valid)}.")


def resolve_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else ROOT / p


def build_model(config, vocab_size: int) -> lit_decoder.Model:
    dtype = {"float32": "float32", "bfloat16": "bfloat16"}.get(config.matmul_precision)
    if dtype is None:
        raise ValueError(f"matmul_precision must be 'float32' or 'bfloat16', got {config.matmul_precision!r}.")
    r = config.data.resolution
    return lit_decoder.Model(
        encoder_cfg={**dict(config.encoder.model), "dtype_mm": dtype},
        decoder_cfg={**dict(config.decoder), "vocab_size": vocab_size, "max_len": config.data.max_len,
                     "dtype_mm": dtype},
        image_size=(r, r), encoder_trainable=config.encoder.trainable)


def init_params(model: lit_decoder.Model, config) -> dict:
    """Decoder params from init; encoder params from the checkpoint (only their shapes are
    traced, never a random init that would be thrown away) or a random init without one."""
    r, L = config.data.resolution, config.data.max_len
    rng = jax.random.PRNGKey(config.seed)
    n, d = model.token_shape()
    params = dict(jax.jit(model.init)(rng, jnp.zeros((1, L - 1), jnp.int32), jnp.ones((1,), jnp.int32),
                                      image_tokens=jnp.zeros((1, n, d)))["params"])
    encoder = vit.Model(**model.encoder_cfg)
    images = jnp.zeros((1, r, r, 3))
    if not config.encoder.path:
        params["img"] = jax.jit(encoder.init)(rng, images)["params"]
        return params
    path = resolve_path(config.encoder.path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder checkpoint {path} (config.encoder.path) not found; rebuild "
                                "it with `python -m litlab.pretrain` or point to a big_vision ViT .npz.")
    params["img"] = vit.load(jax.eval_shape(encoder.init, rng, images)["params"], str(path),
                             dict(config.encoder.model))
    return params


def enable_compilation_cache() -> None:
    """Reuse compiled XLA programs across runs (tests, resumed runs, notebooks): on 2 CPU cores
    compiling costs more than a short training run. A user's own setting wins."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(tasks.cache_dir() / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def make_schedule(config):
    s, lr, total = config.schedule, config.optimizer.lr, config.total_steps
    warm = max(int(s.warmup_steps), 0)
    if s.name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warm, 1), max(total, warm + 1), 0.0)
    if s.name == "rsqrt":
        w = max(warm, 1)
        return lambda step: lr * jnp.minimum(1.0, (step + 1) / w) * jnp.sqrt(w / jnp.maximum(step + 1, w))
    raise ValueError(f"unknown schedule.name {s.name!r}; choose 'cosine' or 'rsqrt'.")


def frozen_patterns(config) -> list[str]:
    return freeze.frozen_patterns(config.encoder.trainable) + list(config.freeze)


def make_optimizer(config, params, schedule):
    o = config.optimizer
    # Decoupled weight decay on kernels only: biases, norms and embeddings stay undecayed.
    decay = jax.tree.map(lambda n: n.endswith("/kernel"), freeze.param_names(params))
    if o.name == "adamw":
        tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay)
    elif o.name == "adafactor":
        tx = optax.chain(optax.adafactor(schedule, weight_decay_rate=None),
                         optax.add_decayed_weights(o.weight_decay, mask=decay))
    else:
        raise ValueError(f"unknown optimizer.name {o.name!r}; choose 'adamw' or 'adafactor'.")
    if o.grad_clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    patterns = frozen_patterns(config)
    return freeze.masked_optimizer(tx, params, patterns), freeze.frozen_mask(params, patterns)


def loss_and_metrics(model, params, batch, rng, *, num_tasks: int, label_smoothing: float, train: bool):
    """Mean cross-entropy over target tokens, plus per-task loss and token accuracy."""
    tokens = batch["tokens"]
    inputs, labels, mask = tokens[:, :-1], tokens[:, 1:], batch["loss_mask"][:, 1:]
    image = {"image_tokens": batch["image_tokens"]} if "image_tokens" in batch else {"images": batch["image"]}
    logits = model.apply({"params": params}, inputs, batch["prefix_len"], train=train,
                         rngs={"dropout": rng}, **image)
    vocab = logits.shape[-1]
    targets = jax.nn.one_hot(labels, vocab)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / vocab
    tok_loss = optax.softmax_cross_entropy(logits, targets)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    ex_loss, ex_tok, ex_ok = (jnp.sum(x * mask, 1) for x in (tok_loss, jnp.ones_like(mask), correct))
    n_tok = jnp.maximum(jnp.sum(ex_tok), 1.0)
    loss = jnp.sum(ex_loss) / n_tok
    seg = lambda x: jax.ops.segment_sum(x, batch["task_id"], num_segments=num_tasks)
    t_tok = jnp.maximum(seg(ex_tok), 1.0)
    return loss, {"loss": loss, "accuracy": jnp.sum(ex_ok) / n_tok, "task_loss": seg(ex_loss) / t_tok,
                  "task_accuracy": seg(ex_ok) / t_tok, "task_tokens": seg(ex_tok)}


def make_train_step(model, tx, frozen, schedule, *, seed: int, num_tasks: int, label_smoothing: float):
    base = jax.random.PRNGKey(seed)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(base, state.step)
        grad_fn = jax.value_and_grad(
            lambda p: loss_and_metrics(model, p, batch, rng, num_tasks=num_tasks,
                                       label_smoothing=label_smoothing, train=True), has_aux=True)
        (_, metrics), grads = grad_fn(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # Frozen params are passed through untouched (not p + 0), so they stay bit-identical.
        params = jax.tree.map(lambda f, p, u: p if f else (p + u).astype(p.dtype), frozen, state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


@dataclasses.dataclass
class Run:
    """What training leaves for evaluation, prompting and notebooks."""
    config: ml_collections.ConfigDict
    workdir: Path
    model: lit_decoder.Model
    params: dict
    tokenizer: Tokenizer
    data: pipeline.MixtureData
    history: list[dict]
    image_tokens: np.ndarray | None  # the feature cache of data.images, if one was built
    steps_per_s: float


def load_data(config, tok: Tokenizer, split: str = "train") -> pipeline.MixtureData:
    return pipeline.build(mixtures.get_mixture(config.mixture), split, tok, max_len=config.data.max_len,
                          prompting=tasks.Prompting(config.prompt_style, config.prompt_shared),
                          seed=config.seed, resolution=config.data.resolution, limit=config.data.limit)


def encoder_fn(model: lit_decoder.Model, params: dict):
    """Jitted uint8 images -> image tokens, for the feature cache and for evaluation."""
    @jax.jit
    def encode(images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        return model.apply({"params": params}, x, method=lit_decoder.Model.encode)
    return encode


def build_feature_cache(config, model, params, data) -> np.ndarray | None:
    if config.feature_cache == "none":
        return None
    if config.encoder.trainable is not False:
        raise ValueError("feature_cache needs a frozen encoder (encoder.trainable=False): a trained "
                         "encoder changes its features every step. Set feature_cache='none'.")
    shape = model.token_shape()
    return features.build(encoder_fn(model, params), data.images, data.image_keys, shape,
                          encoder_digest=features.params_digest(params["img"]), where=config.feature_cache,
                          cache_dir=tasks.cache_dir() / "features")


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def train(config, workdir: str | Path, *, progress: bool = True, evaluate_at_end: bool = True) -> Run:
    """Trains (or resumes) the run in `workdir`; the notebooks and the CLI both call this."""
    check_config(config)
    evaluate = None
    if evaluate_at_end or config.eval_every:
        from litlab import evaluate  # evaluation imports training helpers; import late to avoid a cycle

    enable_compilation_cache()
    workdir = Path(workdir)
    # Process 0 holds the lock for all processes of a multi-host run (they share the workdir).
    lock = checkpoints.workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        t_start = time.perf_counter()
        if jax.process_index() == 0:
            _write_json(workdir / "config.json", config.to_dict())
        tok = Tokenizer()
        data = load_data(config, tok)
        model = build_model(config, tok.vocab_size)
        params = init_params(model, config)
        schedule = make_schedule(config)
        tx, frozen = make_optimizer(config, params, schedule)

        mesh = sharding.make_mesh(config.mesh.data)
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        state_sh = TrainState(sharding.replicated(mesh),
                              sharding.param_shardings(mesh, params, config.sharding_strategy),
                              sharding.param_shardings(mesh, state.opt_state, config.sharding_strategy))
        state = jax.device_put(state, state_sh)
        ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
        restored, start = ckpt.restore(abstract)
        if restored is not None:
            state = restored
            print(f"resuming {workdir} from checkpoint step {start}", flush=True)
        start = int(start or 0)

        image_tokens = build_feature_cache(config, model, params, data)
        num_tasks = len(data.tasks)
        step_fn = jax.jit(make_train_step(model, tx, frozen, schedule, seed=config.seed, num_tasks=num_tasks,
                                          label_smoothing=config.label_smoothing),
                          in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                          out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
        history = _read_history(workdir, upto=start)
        state, steps_per_s = _loop(config, workdir, state, step_fn, data, image_tokens, mesh, ckpt, start,
                                   history, progress, evaluate if config.eval_every else None, model, tok)
        ckpt.close()
        run = Run(config, workdir, model, host_params(state.params), tok, data, history, image_tokens,
                  steps_per_s)
        if jax.process_index() == 0:
            if evaluate_at_end:
                evaluate.evaluate_run(run, split=config.eval.split, progress=progress)
            _write_json(workdir / "train_summary.json", {
                "steps": config.total_steps, "resumed_from": start, "steps_per_s": run.steps_per_s,
                "wall_s": round(time.perf_counter() - t_start, 1)})
        return run


def host_params(params) -> dict:
    """Params as numpy on this host, gathered from every process in a multi-host run."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(params, tiled=True)


def _read_history(workdir: Path, upto: int) -> list[dict]:
    """Logged metrics of earlier attempts up to the resumed step (later lines were not kept)."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= upto]
    if jax.process_index() == 0:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _tb_scalar_metadata() -> bytes:
    """TensorBoard's scalar-plugin tag, so event files plot without the tensorboard package."""
    from tensorflow.core.framework import summary_pb2
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name="scalars")).SerializeToString()


def _loop(config, workdir, state, step_fn, data, image_tokens, mesh, ckpt, start, history, progress,
          evaluator, model, tok) -> tuple[TrainState, float]:
    import tensorflow as tf

    total = config.total_steps
    proc, nproc = jax.process_index(), jax.process_count()
    ds = pipeline.train_dataset(data, config.batch_size, seed=config.seed, start_step=start,
                                num_steps=max(total - start, 0), process_index=proc, process_count=nproc,
                                with_images=image_tokens is None)
    bsh = sharding.batch_sharding(mesh)
    writer = tf.summary.create_file_writer(str(workdir / "tb")) if proc == 0 else None
    _TB_SCALAR = _tb_scalar_metadata()
    names = data.task_names
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not progress or proc != 0)
    metrics_file = open(workdir / "metrics.jsonl", "a") if proc == 0 else None
    prev = None  # (step, metrics) of the previous step, checked one step late to keep dispatch async
    first, t0, timed_from = start, None, start

    def check(step, m):
        loss = float(m["loss"])
        if not math.isfinite(loss):
            last = ckpt.latest_step()
            raise FloatingPointError(
                f"loss is {loss} at step {step}; stopping. Last good checkpoint: "
                f"{'step ' + str(last) if last is not None else 'none'} in {ckpt.directory}. Lower "
                "optimizer.lr, enable optimizer.grad_clip_norm, or inspect the batch at this step.")
        return loss

    def log(step, m):
        row = {"step": step, "loss": float(m["loss"]), "accuracy": float(m["accuracy"]),
               "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"])}
        tl, ta, tt = (np.asarray(m[k]) for k in ("task_loss", "task_accuracy", "task_tokens"))
        for i, n in enumerate(names):
            if tt[i] > 0:
                row[f"loss/{n}"], row[f"accuracy/{n}"] = float(tl[i]), float(ta[i])
        history.append(row)
        if metrics_file:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
            with writer.as_default(step=step):
                for k, v in row.items():
                    if k != "step":
                        tf.summary.write(k, tf.constant(v, tf.float32), metadata=_TB_SCALAR)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")

    for batch in ds.as_numpy_iterator():
        step = int(start) + 1
        row = batch.pop("image_row")
        if image_tokens is not None:
            batch["image_tokens"] = np.asarray(image_tokens[row])
        batch = {k: jax.make_array_from_process_local_data(bsh, v) for k, v in batch.items()}
        state, m = step_fn(state, batch)
        if prev is not None:
            check(*prev)
            if prev[0] % config.log_every == 0 or prev[0] == total:
                log(*prev)
        if t0 is None and step > first + 1:
            t0, timed_from = time.perf_counter(), step - 1  # exclude the first (compiling) step
        prev = (step, m)
        start = step
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == total:
            check(*prev)
            ckpt.save(step, state)
        if evaluator and step % config.eval_every == 0 and step < total:
            params = host_params(state.params)  # every process takes part in the gather
            if proc == 0:
                evaluator.evaluate_run(Run(config, workdir, model, params, tok, data, history, image_tokens, 0.0),
                                       split=config.eval.split, progress=False, tag=f"step_{step}")
    if prev is not None:  # the last step is always logged
        check(*prev)
        log(*prev)
    jax.block_until_ready(state)
    bar.close()
    if metrics_file:
        metrics_file.close()
        writer.flush()
    elapsed = time.perf_counter() - t0 if t0 else 0.0
    sps = (start - timed_from) / elapsed if elapsed > 0 else 0.0
    return state, round(sps, 3)


def main(argv=None) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "config file, e.g. litlab/configs/quickstart.py:smoke",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics and evaluations go")
    flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-host runs")
    flags.DEFINE_integer("num_processes", 1, "number of processes (multi-host)")
    flags.DEFINE_integer("process_id", 0, "this process's index (multi-host)")
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        f = flags.FLAGS
        if f.coordinator:
            # CPU devices need gloo for cross-process collectives; GPUs/TPUs ignore this setting.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(f.coordinator, f.num_processes, f.process_id)
        try:
            train(f.config, f.workdir)
        except (checkpoints.WorkdirBusy, FloatingPointError, ValueError, FileNotFoundError, KeyError) as e:
            print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
            sys.exit(2)

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
