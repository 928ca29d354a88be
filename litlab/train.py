"""Training the LiT-decoder: one code path behind the CLI and the notebooks.

    python -m litlab.train --config litlab/configs/quickstart.py[:smoke] --workdir DIR [--config.KEY=V] [--overwrite]

The step is one jitted function with the train state donated; the loss covers target tokens
only. With a frozen encoder, image tokens come from the feature cache, so the encoder never runs
during training. Checkpoints are atomic and the data stream is a pure function of the step, so
a killed run restarted with the same command continues exactly where its last checkpoint was.
A workdir belongs to one config: rerunning it with a config that would change the result is
refused (or, with --overwrite, the old run is moved aside), so two experiments never mix.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from litlab import checkpoints, config as config_lib, decode, evaluate, freeze, runs, sharding
from litlab.data import mixtures, pipeline, tasks
from litlab.data.tokenizer import Tokenizer
from litlab.models import decoder


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState


class WorkdirMismatch(ValueError):
    """The workdir holds a run whose config differs in something that changes the result."""


def enable_compilation_cache() -> None:
    """Reuse compiled XLA programs across runs (tests, resumed runs, studies, notebooks): on 2 CPU
    cores compiling often costs more than a short training run. A user's own setting wins."""
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
    if "question_tokens" in batch:
        image["question_tokens"] = batch["question_tokens"]
    logits = model.apply({"params": params}, inputs, batch["prefix_len"], train=train,
                         rngs={"dropout": rng}, **image)
    if label_smoothing:
        vocab = logits.shape[-1]
        targets = jax.nn.one_hot(labels, vocab) * (1.0 - label_smoothing) + label_smoothing / vocab
        tok_loss = optax.softmax_cross_entropy(logits, targets)
    else:  # no [B, L, vocab] one-hot to build, multiply and differentiate
        tok_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    # A token is right when its label's logit is the largest. This reuses the max that the
    # softmax takes, where an argmax is a second pass over [B, L, vocab] (an exact tie, which
    # argmax would break by index, counts as right).
    label_logit = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
    correct = (label_logit >= jnp.max(logits, -1)).astype(jnp.float32)
    ex_loss, ex_tok, ex_ok = (jnp.sum(x * mask, 1) for x in (tok_loss, jnp.ones_like(mask), correct))
    n_tok = jnp.maximum(jnp.sum(ex_tok), 1.0)
    loss = jnp.sum(ex_loss) / n_tok
    seg = lambda x: jax.ops.segment_sum(x, batch["task_id"], num_segments=num_tasks)
    t_tok = jnp.maximum(seg(ex_tok), 1.0)
    return loss, {"loss": loss, "accuracy": jnp.sum(ex_ok) / n_tok, "task_loss": seg(ex_loss) / t_tok,
                  "task_accuracy": seg(ex_ok) / t_tok, "task_tokens": seg(ex_tok)}


def make_train_step(model, tx, frozen, schedule, *, num_tasks: int, label_smoothing: float):
    """step(state, batch, seed_key) -> (state, metrics). The seed's key is an argument, not a
    constant baked into the program, so the runs of a study that differ only in seed share one
    compiled step."""

    def step(state: TrainState, batch, seed_key):
        rng = jax.random.fold_in(seed_key, state.step)
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


# This process's jitted train steps, by everything their program depends on: a study's runs that
# differ only in seed, data, prompts or bookkeeping share one trace (and one compilation).
_STEPS: collections.OrderedDict = collections.OrderedDict()
_NOT_IN_STEP = ("seed", "data.seed", "data.limit", "mixture", "prompt_style", "prompt_shared", "feature_cache",
                "encoder.path", "encoder.seed", "inputs.image_tokens", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every")


def _jitted_step(config, model, *, num_tasks: int, make):
    """The step `make()` builds, or the one an earlier run with an equal program built. Config keys
    not listed in _NOT_IN_STEP (or under eval.) are part of the key, so a missing entry there
    costs a retrace, never a wrong program. The seed is an argument of the step, not a constant."""
    program = {k: v for k, v in config_lib.flat(config).items() if k not in _NOT_IN_STEP and not k.startswith("eval.")}
    key = (json.dumps(program, sort_keys=True, default=repr), repr(model), num_tasks)
    if key not in _STEPS:
        _STEPS[key] = make()
        while len(_STEPS) > 4:
            _STEPS.popitem(last=False)
    _STEPS.move_to_end(key)
    return _STEPS[key]


def build_feature_cache(config, model, params, data) -> np.ndarray | None:
    if config.feature_cache == "none":
        return None
    if config.feature_cache not in ("memory", "disk"):
        raise ValueError(f"feature_cache must be 'memory', 'disk' or 'none', got {config.feature_cache!r}.")
    if config.encoder.trainable is not False:
        raise ValueError("feature_cache needs a frozen encoder (encoder.trainable=False): a trained "
                         "encoder changes its features every step. Set feature_cache='none'.")
    return runs.image_tokens(config, model, params, data.images, data.image_keys)


def _write_json(path: Path, obj) -> None:
    checkpoints.write_atomic(path, json.dumps(obj, indent=2))


def validate(config) -> None:
    """Everything that can be checked before the first expensive step (rendering, caching,
    compiling), each error naming its key."""
    config_lib.check(config)
    flat = config_lib.flat(config)
    for key in ("total_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                "data.max_len", "data.resolution", "decoder.depth", "decoder.width", "decoder.num_heads",
                "eval.limit", "eval.batch_size"):
        value = flat[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config key {key!r} must be a positive integer, got {value!r}.")
    if isinstance(config.eval_every, bool) or not isinstance(config.eval_every, int) or config.eval_every < 0:
        raise ValueError(f"config key 'eval_every' must be 0 (evaluate at the end only) or a positive number of "
                         f"steps, got {config.eval_every!r}.")
    if config.inputs.question == "memory" and (not isinstance(config.data.question_len, int)
                                               or config.data.question_len < 1):
        raise ValueError(f"config key 'data.question_len' must be a positive integer with "
                         f"inputs.question='memory', got {config.data.question_len!r}.")
    patch = tuple(config.encoder.model.get("patch_size", (16, 16)))
    if any(config.data.resolution % p for p in patch):
        raise ValueError(f"config key 'data.resolution' ({config.data.resolution}) is not a multiple of the encoder's "
                         f"patch size {patch} (encoder.model.patch_size): the patch layer would ignore the right "
                         "and bottom edge. Choose a multiple of the patch size.")
    n_dev = jax.device_count() if config.mesh.data == -1 else config.mesh.data
    if isinstance(n_dev, int) and n_dev > 0 and config.batch_size % n_dev:
        raise ValueError(f"config key 'batch_size' ({config.batch_size}) must be divisible by the {n_dev} devices "
                         "of the mesh (mesh.data); choose a multiple, or set mesh.data.")
    sharding.check_strategy(config.sharding_strategy)
    for key, allowed in (("matmul_precision", ("float32", "bfloat16")), ("feature_cache", ("memory", "disk", "none")),
                         ("optimizer.name", ("adamw", "adafactor")), ("schedule.name", ("cosine", "rsqrt")),
                         ("inputs.image_tokens", ("encoder", "oracle", "encoder+oracle")),
                         ("decoder.conditioning", decoder.CONDITIONINGS), ("decoder.image_posemb", decoder.IMAGE_POSEMBS)):
        if flat[key] not in allowed:
            raise ValueError(f"config key {key!r} must be one of {allowed}, got {flat[key]!r}.")
    if config.inputs.image_tokens != "encoder" and (config.feature_cache == "none" or config.encoder.trainable is not False):
        raise ValueError(f"inputs.image_tokens={config.inputs.image_tokens!r} replaces the frozen encoder's cached "
                         "tokens; it needs feature_cache='memory' or 'disk' and encoder.trainable=False.")
    runs.prompting(config)  # an unknown prompt style or question place fails here
    mixtures.get_mixture(config.mixture)
    decode.parse_method(config.eval.decode)  # not only after training has finished


def _set_aside(workdir: Path) -> Path:
    """Moves a previous run's files out of `workdir` into a sibling folder; nothing is deleted."""
    aside = workdir.with_name(f"{workdir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir(parents=True)
    for p in workdir.iterdir():
        if p.name != ".lock":
            p.rename(aside / p.name)
    return aside


def _claim(workdir: Path, config, overwrite: bool) -> None:
    """Refuses a workdir that holds another experiment; `overwrite` sets that one aside."""
    saved_path = workdir / "config.json"
    has_run = saved_path.is_file() or (workdir / "checkpoints").is_dir()
    if not has_run:
        return
    diff = (config_lib.differences(runs.read_config(workdir), config) if saved_path.is_file()
            else {"config.json": ("<missing>", "present")})
    if not diff:
        return
    if overwrite:
        print(f"--overwrite: the previous run in {workdir} was moved to {_set_aside(workdir)}", flush=True)
        return
    shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])
    more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
    raise WorkdirMismatch(
        f"workdir {workdir} holds a run with a different config ({shown}{more}). Resuming it would mix "
        "two experiments. Use a new --workdir, or pass --overwrite (train(..., overwrite=True)) to move "
        "the old run aside and start this one.")


def train(config, workdir: str | Path, *, evaluators: Sequence = (), progress: bool = True,
          overwrite: bool = False) -> runs.Run:
    """Trains (or resumes) the run in `workdir` and returns it with `metrics` filled in by the
    `evaluators` (callables `(run, tag=None) -> {task: {metric: value}}`, e.g. from
    `litlab.evaluate.for_config`), which also run every `eval_every` steps."""
    validate(config)
    enable_compilation_cache()
    workdir = Path(workdir)
    # Process 0 holds the lock for all processes of a multi-host run (they share the workdir).
    lock = checkpoints.workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        t_start = time.perf_counter()
        if jax.process_index() == 0:
            _claim(workdir, config, overwrite)
        tok = Tokenizer()
        model = runs.build_model(config, tok.vocab_size)
        params = runs.init_params(model, config)
        schedule = make_schedule(config)
        tx, frozen = make_optimizer(config, params, schedule)

        mesh = sharding.make_mesh(config.mesh.data)
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        state_sh = TrainState(sharding.replicated(mesh),
                              sharding.param_shardings(mesh, params, config.sharding_strategy),
                              sharding.param_shardings(mesh, state.opt_state, config.sharding_strategy))
        # Everything is validated; from here on the workdir is this config's.
        if jax.process_index() == 0:
            _write_json(workdir / "config.json", config.to_dict())
        data = runs.load_data(config, tok)
        state = jax.device_put(state, state_sh)
        ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
        restored, start = ckpt.restore(abstract)
        if restored is not None:
            state = restored
            print(f"resuming {workdir} from checkpoint step {start}", flush=True)
        start = int(start or 0)

        t_setup = time.perf_counter()
        image_tokens = build_feature_cache(config, model, params, data)
        t_features = time.perf_counter()
        step_fn = _jitted_step(config, model, num_tasks=len(data.tasks), make=lambda: jax.jit(
            make_train_step(model, tx, frozen, schedule, num_tasks=len(data.tasks),
                            label_smoothing=config.label_smoothing),
            in_shardings=(state_sh, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
            out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0))
        history = _read_history(workdir, upto=start)
        run = runs.Run(config, workdir, model, None, tok, history=history)
        state, run.steps_per_s, first_step_s = _loop(
            config, workdir, state, step_fn, data, image_tokens, mesh, ckpt, start, history, progress,
            evaluators if config.eval_every else (), run)
        ckpt.close()
        run.params, run.step = host_params(state.params), int(config.total_steps)
        t_train = time.perf_counter()
        if jax.process_index() == 0:
            for evaluator in evaluators:
                run.metrics[evaluator.name] = evaluator(run)
            t_end = time.perf_counter()
            run.wall_s = round(t_end - t_start, 1)
            run.timings = {k: round(v, 2) for k, v in (
                ("setup", t_setup - t_start), ("features", t_features - t_setup), ("first_step", first_step_s),
                ("train", t_train - t_features - first_step_s), ("eval", t_end - t_train))}
            _write_json(workdir / "train_summary.json", {
                "steps": config.total_steps, "resumed_from": start, "steps_per_s": run.steps_per_s,
                "wall_s": run.wall_s, "timings": run.timings, "trainable_params": run.trainable_params,
                "metrics": run.metrics})
        return run


def host_params(params) -> dict:
    """Params as numpy on this host, gathered from every process in a multi-host run."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(params, tiled=True)


def _read_history(workdir: Path, upto: int) -> list[dict]:
    """Logged metrics of earlier attempts up to the resumed step (later lines were not kept).

    A torn last line (the process was killed while writing it) is dropped with a warning; a
    broken line anywhere else means the file was damaged, and is refused with its line number.
    """
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines):
                warnings.warn(f"{path}:{lineno}: dropped a torn last line (a run killed while logging).", stacklevel=2)
                continue
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); the metrics log is damaged. Fix or "
                             "delete that line (the checkpoints are not affected).") from None
    rows = [r for r in rows if r["step"] <= upto]
    if jax.process_index() == 0:
        checkpoints.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _tb_scalar_metadata() -> bytes:
    """TensorBoard's scalar-plugin tag, so event files plot without the tensorboard package."""
    from tensorflow.core.framework import summary_pb2
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name="scalars")).SerializeToString()


def _loop(config, workdir, state, step_fn, data, image_tokens, mesh, ckpt, start, history, progress,
          evaluators, run) -> tuple[TrainState, float, float]:
    """Runs the steps from `start`; returns (state, steps/s after the first step, seconds until
    the first step finished: its compilation, or the compilation cache's read, plus one step)."""
    import tensorflow as tf

    total = config.total_steps
    proc, nproc = jax.process_index(), jax.process_count()
    batches = pipeline.train_batches(data, config.batch_size, seed=config.seed, start_step=start,
                                     num_steps=max(total - start, 0), process_index=proc, process_count=nproc,
                                     with_images=image_tokens is None)
    bsh = sharding.batch_sharding(mesh)
    seed_key = jax.device_put(jax.random.PRNGKey(config.seed), sharding.replicated(mesh))
    writer = tf.summary.create_file_writer(str(workdir / "tb")) if proc == 0 else None
    _TB_SCALAR = _tb_scalar_metadata()
    names = data.task_names
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=not progress or proc != 0)
    metrics_path = workdir / "metrics.jsonl" if proc == 0 else None
    prev = None  # (step, metrics) of the previous step, checked one step late to keep dispatch async
    first, t0, timed_from = start, None, start
    t_loop = time.perf_counter()

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
        if metrics_path:
            # Opened per line, so a log deleted or moved during the run is started again.
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            with writer.as_default(step=step):
                for k, v in row.items():
                    if k != "step":
                        tf.summary.write(k, tf.constant(v, tf.float32), metadata=_TB_SCALAR)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")

    for batch in batches:
        step = int(start) + 1
        row = batch.pop("image_row")
        if image_tokens is not None:
            batch["image_tokens"] = np.asarray(image_tokens[row])
        batch = {k: jax.make_array_from_process_local_data(bsh, v) for k, v in batch.items()}
        state, m = step_fn(state, batch, seed_key)
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
        if evaluators and step % config.eval_every == 0 and step < total:
            params = host_params(state.params)  # every process takes part in the gather
            if proc == 0:
                snapshot = dataclasses.replace(run, params=params, step=step)
                for evaluator in evaluators:
                    evaluator(snapshot, tag=f"step_{step}/{evaluator.name}")
    if prev is not None:  # the last step is always logged
        check(*prev)
        log(*prev)
    jax.block_until_ready(state)
    bar.close()
    if writer:
        writer.flush()
    t_end = time.perf_counter()
    elapsed = t_end - t0 if t0 else 0.0
    sps = (start - timed_from) / elapsed if elapsed > 0 else 0.0
    return state, round(sps, 3), (t0 or t_end) - t_loop


# What a run's command line (train, demo) reports as one `error:` line instead of a traceback:
# bad config values and files, a busy workdir, a diverged loss.
RUN_ERRORS = (checkpoints.WorkdirBusy, FloatingPointError, ValueError, FileNotFoundError, KeyError)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m litlab.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="file.py[:arg], e.g. litlab/configs/quickstart.py:smoke; "
                    "then any --config.KEY=VALUE")
    ap.add_argument("--workdir", required=True, help="where checkpoints, metrics and evaluations go")
    ap.add_argument("--overwrite", action="store_true",
                    help="if the workdir holds a run with another config, move it aside and start anew")
    ap.add_argument("--coordinator", default=None, help="host:port of process 0 for multi-host runs")
    ap.add_argument("--num_processes", type=int, default=1, help="number of processes (multi-host)")
    ap.add_argument("--process_id", type=int, default=0, help="this process's index (multi-host)")
    ap.add_argument("--debug", action="store_true", help="show full tracebacks")
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = config_lib.split_cli_overrides(argv)
        args = ap.parse_args(rest)
        config = config_lib.override(config_lib.load(args.config), overrides, from_strings=True)
        if args.coordinator:
            # CPU devices need gloo for cross-process collectives; GPUs/TPUs ignore this setting.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        train(config, args.workdir, evaluators=evaluate.for_config(config), overwrite=args.overwrite)
    except RUN_ERRORS as e:
        if "--debug" in argv:
            raise
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
