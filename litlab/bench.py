"""`python -m litlab.bench`: the performance suite. Figures are measured here, never asserted in
tests, because shared machines are noisy; comparisons are made side by side in one run. Asked
for several suites, it runs each in a fresh process."""

from __future__ import annotations

import argparse
import collections
import inspect
import itertools
import json
import re
import sys
import time
from pathlib import Path

import jax
import numpy as np

from litlab import decode
from litlab.data import mixtures, pipeline
from litlab.data.tokenizer import Tokenizer
from litlab.models import lit_decoder


def bench_pipeline(*, batch_size: int = 256, steps: int = 60, limit: int = 2000, max_len: int = 48) -> dict:
    """Examples/s that the tf.data pipeline delivers for the default mixture at 64x64 (float32
    images in [-1, 1], tokens, masks), measured after a warm-up, and without pixels (cache mode)."""
    data = pipeline.build(mixtures.get_mixture("all_temperature"), "train", Tokenizer(),
                          max_len=max_len, limit=limit)
    out = {}
    for with_images in (True, False):
        it = pipeline.train_batches(data, batch_size, seed=0, with_images=with_images)
        for _ in range(5):
            next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        dt = time.perf_counter() - t0
        out["examples_per_s" + ("" if with_images else "_no_images")] = round(steps * batch_size / dt, 1)
    return out


def bench_decode(*, batch_sizes=(1, 64), new_tokens: int = 32, min_seconds: float = 1.0,
                 precisions=("float32", "bfloat16"), conditionings=("cross", "prefix", "pooled")) -> dict:
    """Greedy decoding throughput (generated tokens/s) with the KV cache and with full
    recomputation, side by side, per conditioning and matmul precision, after a warm-up compile.

    A quickstart-size decoder (depth 2, width 256, 4 heads, MLP 1024, vocab 1000, max_len 48)
    with init weights reads 64 random image tokens of width 192 after prompts of 4-16 tokens.
    eos_id=None makes every example generate all `new_tokens`, so both variants do the same work
    whatever the untrained model emits; "same_tokens" checks that they also agree (in float32; in
    bfloat16 on CPU the cached path's attention runs in float32, see decoder._cache_dtype, and a
    rounding difference can flip a near-tie of the untrained model, after which the sequences
    part; "tokens_agree" is the fraction of generated tokens equal). Each figure is
    the fastest of the calls made in `min_seconds`: the least disturbed one on a shared machine.
    """
    enc = dict(patch_size=(8, 8), width=192, depth=1, mlp_dim=384, num_heads=3)
    rng = np.random.default_rng(0)
    out = {"device": str(jax.devices()[0].device_kind)}
    for cond, prec in itertools.product(conditionings, precisions):
        dec = dict(vocab_size=1000, width=256, depth=2, num_heads=4, mlp_dim=1024, max_len=48,
                   conditioning=cond, dtype_mm=prec)
        model = lit_decoder.Model(encoder_cfg=enc, decoder_cfg=dec, image_size=(64, 64))
        params = None
        for batch in batch_sizes:
            image_tokens = rng.normal(size=(batch, 64, 192)).astype(np.float32)
            prompts = rng.integers(3, 1000, (batch, 16)).astype(np.int32)
            prefix_len = rng.integers(4, 17, batch)
            if params is None:
                params = model.init(jax.random.PRNGKey(0), prompts, prefix_len,
                                    image_tokens=image_tokens)["params"]
            row, tokens = {}, {}
            for use_cache in (True, False):
                def run():
                    return jax.block_until_ready(decode.generate(
                        model, params, prompts, prefix_len, image_tokens=image_tokens,
                        max_new_tokens=new_tokens, eos_id=None, use_cache=use_cache))
                tokens[use_cache] = np.asarray(run()[0])  # warm-up: compiles
                times, t0 = [], time.perf_counter()
                while not times or time.perf_counter() - t0 < min_seconds:
                    t = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t)
                name = "cached" if use_cache else "uncached"
                row[f"{name}_tokens_per_s"] = round(batch * new_tokens / min(times), 1)
            row["cached_over_uncached"] = round(
                row["cached_tokens_per_s"] / row["uncached_tokens_per_s"], 2)
            row["same_tokens"] = bool((tokens[True] == tokens[False]).all())
            row["tokens_agree"] = round(float((tokens[True] == tokens[False]).mean()), 3)
            out[f"{cond}_{prec}_batch{batch}"] = row
    return out


# The paper's setting: a ViT-B/16 encoder at 224 px (random weights: speed does not depend on
# them) under the quickstart decoder. There the encoder dwarfs the decoder, which is where the
# frozen-feature cache pays.
VIT_B16 = dict(patch_size=(16, 16), width=768, depth=12, mlp_dim=3072, num_heads=12, posemb="learn", pool_type="gap")


def bench_train(*, steps: int = 20, limit: int = 256, paper_repeats: int = 5, quick: bool = False) -> dict:
    """Quickstart-size train steps/s with the frozen-feature cache vs the encoder in the loop,
    and float32 vs bfloat16 matmuls, side by side (compilation excluded); then the cache's
    speedup in the paper's setting (ViT-B/16 at 224 px, the quickstart decoder, batch 32).
    `quick` runs the smoke configuration, its encoder at 224 px for the paper rows (seconds:
    the machinery, not the figures)."""
    import tempfile

    from litlab import config, train
    from litlab.configs import quickstart

    base = quickstart.get_config("smoke" if quick else None)
    if quick:
        steps, limit, paper_repeats = 3, base.data.limit, 2
    runs_ = (("cached_bf16", {"matmul_precision": "bfloat16"}),
             ("encoder_in_loop_bf16", {"matmul_precision": "bfloat16", "feature_cache": "none"}),
             ("cached_f32", {"matmul_precision": "float32"}))
    out = {}
    for name, overrides in runs_:
        c = config.override(base, {
            "total_steps": steps, "checkpoint_every": steps, "log_every": steps, "data.limit": limit, **overrides})
        with tempfile.TemporaryDirectory() as workdir:
            out[f"{name}_steps_per_s"] = train.train(c, workdir, progress=False).steps_per_s
    out["cache_speedup"] = round(out["cached_bf16_steps_per_s"] / out["encoder_in_loop_bf16_steps_per_s"], 2)
    out["bf16_speedup"] = round(out["cached_bf16_steps_per_s"] / out["cached_f32_steps_per_s"], 2)
    out.update(paper_cache(base, repeats=paper_repeats, quick=quick))
    return out


def paper_cache(base, *, repeats: int, quick: bool) -> dict:
    """The cache's speedup in the paper's setting, as the ratio of two jitted train steps timed
    alternately: the decoder on cached tokens, and the ViT-B/16 (frozen) plus the decoder on
    pixels. Steps alone, as in `mfu`: a whole training run at this size would also time writing
    the 86M frozen encoder parameters into its checkpoint, which the cache does not change.
    `flop_ratio` is the analytic bound: what the speedup would be if both steps ran at the
    same FLOP rate."""
    from litlab import config

    paper = config.override(base, {
        "data.resolution": 224, "encoder.path": "", "batch_size": base.batch_size if quick else 32,
        "matmul_precision": "bfloat16", **({} if quick else {"encoder.model": VIT_B16})})
    vocab = Tokenizer().vocab_size
    runners, states, key = {}, {}, jax.random.PRNGKey(0)
    for name, images in (("cached", False), ("encoder_in_loop", True)):
        step, states[name], arrays = train_step_setup(paper, paper.batch_size, vocab, images=images)
        runners[name] = lambda st, fn=jax.jit(step, donate_argnums=0), arrays=arrays: fn(st, arrays, key)
        if not images:
            decoder = config_flops(paper, arrays, vocab)
    encoder = paper.batch_size * vit_forward_flops(paper.encoder.model, paper.data.resolution)
    out = {}
    for name, stat in _time_alternately(runners, states, repeats).items():
        out[f"paper_{name}_bf16_steps_per_s"] = round(1 / stat["median"], 3)
        out[f"paper_{name}_step_ms_p10_p90"] = [round(1e3 * stat["p10"], 1), round(1e3 * stat["p90"], 1)]
    out["paper_cache_speedup"] = round(out["paper_cached_bf16_steps_per_s"] / out["paper_encoder_in_loop_bf16_steps_per_s"], 2)
    out["paper_gflop_decoder_step"] = round(decoder / 1e9, 2)
    out["paper_gflop_encoder_forward"] = round(encoder / 1e9, 2)
    out["paper_flop_ratio"] = round((encoder + decoder) / decoder, 2)
    return out


def vit_forward_flops(model: dict, resolution: int) -> int:
    """Matmul FLOPs of one image through a ViT's forward pass: the patch embedding 2N(P^2 C)D,
    then per layer Q,K,V,O 8ND^2, scores and mixing 4N^2 D and the MLP 4NDF, for N patches
    (plus a class token when pool_type="tok"), width D and MLP width F."""
    p, q = model["patch_size"]
    n = (resolution // p) * (resolution // q)
    d, f = model["width"], model["mlp_dim"]
    s = n + (model.get("pool_type") == "tok")
    return 2 * n * p * q * 3 * d + model["depth"] * (8 * s * d * d + 4 * s * s * d + 4 * s * d * f)


def step_flops(*, batch: int, text_len: int, image_tokens: int, image_width: int, width: int, depth: int,
               mlp_dim: int, vocab: int, conditioning: str) -> int:
    """Matmul FLOPs (2 per multiply-add) of one decoder train step on cached image tokens.

    Per example and layer, with T text positions, M memory tokens (N image tokens; 1 for
    'pooled', which pools before projecting), D image width, W width, F MLP width:
      cross/pooled: self-attention Q,K,V,O 8TW^2 + scores and mixing 4T^2W; cross-attention
                    Q,O 4TW^2 + memory K,V + scores and mixing 4TMW; MLP 4TWF. The memory K,V
                    cost 4MDW when D <= W (the image projection is folded into them, see
                    models/decoder.py), else 4MW^2 after a projection 2MDW.
      prefix:       every layer runs the S = N+T joint sequence: 8SW^2 + 4S^2W + 4SWF, after
                    the projection 2MDW.
    Plus the tied output head 2TWV. The backward pass costs twice the forward (input and weight
    gradients) except where the input is the frozen features (the projection, or the folded K,V),
    which need only their weight gradient. Folding adds, once per step and not per example, the
    products of the projection with each layer's K and V maps: 2DW^2 each, times 3 with their
    gradients. Attention is counted over all T x T positions, as XLA computes it (no causal
    skipping).
    """
    T, N, D, W, F, V = text_len, image_tokens, image_width, width, mlp_dim, vocab
    M = 1 if conditioning == "pooled" else N
    fold = conditioning in ("cross", "pooled") and D <= W
    if conditioning == "prefix":
        S = N + T
        layer = 8 * S * W * W + 4 * S * S * W + 4 * S * W * F
    elif conditioning in ("cross", "pooled"):
        layer = 8 * T * W * W + 4 * T * T * W + 4 * T * W * W + 4 * T * M * W + 4 * T * W * F
        layer += 4 * M * D * W if fold else 4 * M * W * W
    else:
        raise ValueError(f"unknown conditioning {conditioning!r}")
    proj = 0 if fold else 2 * M * D * W
    on_features = depth * 4 * M * D * W if fold else proj  # products whose input is the frozen features
    forward = proj + depth * layer + 2 * T * W * V
    folding = depth * 2 * 3 * 2 * D * W * W if fold else 0
    return batch * (3 * forward - on_features) + folding


def config_flops(config, arrays: dict, vocab: int) -> int:
    """`step_flops` for `config`'s decoder on the batch `train_step_setup` made for it."""
    batch, n, d = arrays["image_tokens"].shape
    dec = config.decoder
    return step_flops(batch=batch, text_len=config.data.max_len - 1, image_tokens=n, image_width=d,
                      width=dec.width, depth=dec.depth, mlp_dim=dec.mlp_dim, vocab=vocab,
                      conditioning=dec.conditioning)


def _median_spread(times: list[float]) -> dict:
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90))}


def compile_with_flops(fn, *args):
    """(the executable `fn` compiles to for `args`, XLA's `cost_analysis` FLOP count of it). The
    executable is what gets timed, so the program counted is the program run, compiled once."""
    compiled = fn.lower(*args).compile()
    cost = compiled.cost_analysis()
    return compiled, float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _time_alternately(runners: dict, states: dict, repeats: int) -> dict[str, dict]:
    """{name: median, p10 and p90 seconds} of each `runners[name](state) -> (state, metrics)`,
    called in turn so that all of them see the same machine, `repeats` timed rounds after one
    untimed round (it compiles). `states` holds each runner's (donated) state and is updated."""
    times = {name: [] for name in runners}
    for i in range(repeats + 1):
        for name, run in runners.items():
            t = time.perf_counter()
            states[name], m = run(states[name])
            jax.block_until_ready(m)
            if i:
                times[name].append(time.perf_counter() - t)
    return {name: _median_spread(ts) for name, ts in times.items()}


def train_step_setup(config, batch: int, vocab: int, *, images: bool = False):
    """(step function, not jitted; train state; a random batch of cached image tokens, or of
    pixels with `images`) for `config`'s decoder: what `mfu` and `paper_cache` time and what
    the FLOP-count test compiles."""
    from litlab import runs, train

    model = runs.build_model(config, vocab)
    params = runs.init_params(model, config)
    schedule = train.make_schedule(config)
    tx, frozen = train.make_optimizer(config, params, schedule)
    state = train.TrainState(jax.numpy.zeros((), jax.numpy.int32), params, tx.init(params))
    n, d = model.token_shape()
    L = config.data.max_len
    rng = np.random.default_rng(0)
    arrays = {"tokens": rng.integers(3, vocab, (batch, L)).astype(np.int32),
              "loss_mask": np.ones((batch, L), np.float32),
              "prefix_len": rng.integers(4, 16, batch).astype(np.int32),
              "task_id": rng.integers(0, 5, batch).astype(np.int32)}
    if images:  # what the pipeline gives an encoder in the loop: float32 pixels in [-1, 1]
        r = config.data.resolution
        arrays["image"] = rng.uniform(-1, 1, (batch, r, r, 3)).astype(np.float32)
    else:
        arrays["image_tokens"] = rng.normal(size=(batch, n, d)).astype(np.float32)
    step = train.make_train_step(model, tx, frozen, schedule, num_tasks=5, label_smoothing=0.0)
    return step, state, arrays


def dot_dtypes(hlo: str) -> dict[str, int]:
    """How many dots of an optimized HLO module take which operand dtypes ("bf16 x bf16": 59),
    fused ones included: the check that a bfloat16 step really multiplies in bfloat16."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))  # instruction names are module-unique
    pairs = re.findall(r"= \w+\[[^=]*? dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
    return dict(collections.Counter(f"{types[a]} x {types[b]}" for a, b in pairs))


def matmul_peaks(*, n: int = 2048, repeats: int = 7) -> dict:
    """GFLOP/s of a jitted n^3 matmul in float32 and with bfloat16 inputs and float32
    accumulation: the ceilings the train step's rate is divided by, measured in this run."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jax.numpy.float32)
    out = {}
    for name, dtype in (("f32", jax.numpy.float32), ("bf16", jax.numpy.bfloat16)):
        a = x.astype(dtype)
        f = jax.jit(lambda a, b: jax.lax.dot(a, b, preferred_element_type=jax.numpy.float32))
        jax.block_until_ready(f(a, a))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(a, a))
            times.append(time.perf_counter() - t)
        stat = _median_spread(times)
        out[f"{name}_gflops"] = round(2 * n ** 3 / stat["median"] / 1e9, 1)
        out[f"{name}_gflops_p10_p90"] = [round(2 * n ** 3 / stat[k] / 1e9, 1) for k in ("p90", "p10")]
    return out


def bench_mfu(*, quick: bool = False) -> dict:
    """The quickstart decoder's train step (width 256, depth 2, batch 128, cached image tokens) in
    float32 and bfloat16, timed alternately in this run, as FLOP rate and as a fraction of the
    same-run matmul peak of its precision. The analytic FLOP count (`step_flops`) is reported
    next to XLA's own `cost_analysis`, which also counts elementwise work."""
    from litlab import config
    from litlab.configs import quickstart

    batch, repeats = (32, 3) if quick else (128, 9)
    peaks = matmul_peaks(n=1024 if quick else 2048, repeats=repeats)
    base = config.override(quickstart.get_config(), {"batch_size": batch})
    tok_vocab = Tokenizer().vocab_size
    steps, runners, states, out = {}, {}, {}, {"peaks": peaks, "batch": batch}
    key = jax.random.PRNGKey(0)
    for prec in ("float32", "bfloat16"):
        c = config.override(base, {"matmul_precision": prec})
        step, states[prec], batch_arrays = train_step_setup(c, batch, tok_vocab)
        compiled, xla_flops = compile_with_flops(jax.jit(step, donate_argnums=0), states[prec], batch_arrays, key)
        runners[prec] = lambda st, fn=compiled, arrays=batch_arrays: fn(st, arrays, key)
        steps[prec] = {"flops": config_flops(c, batch_arrays, tok_vocab), "xla_flops": xla_flops,
                       "dots": dot_dtypes(compiled.as_text())}
    for prec, stat in _time_alternately(runners, states, repeats).items():
        s = steps[prec]
        peak = peaks["f32_gflops" if prec == "float32" else "bf16_gflops"]
        rate = s["flops"] / stat["median"] / 1e9
        out[prec] = {"step_ms": round(1e3 * stat["median"], 1),
                     "step_ms_p10_p90": [round(1e3 * stat["p10"], 1), round(1e3 * stat["p90"], 1)],
                     "analytic_gflop": round(s["flops"] / 1e9, 3), "xla_gflop": round(s["xla_flops"] / 1e9, 3),
                     "analytic_over_xla": round(s["flops"] / s["xla_flops"], 3),
                     "gflops": round(rate, 1), "fraction_of_peak": round(rate / peak, 3),
                     "dots_by_operand_dtype": s["dots"]}
    out["bf16_over_f32_speed"] = round(out["float32"]["step_ms"] / out["bfloat16"]["step_ms"], 2)
    return out


# Each axis of `scaling` varies one quickstart setting; image tokens follow the input resolution
# (patch 8: 32 px -> 16 tokens, 128 px -> 256).
SCALING = {"batch": ("batch_size", [8, 32, 128, 256]), "depth": ("decoder.depth", [1, 2, 4, 8, 12]),
           "image_tokens": ("data.resolution", [32, 64, 128]), "text_tokens": ("data.max_len", [17, 33, 65])}
SCALING_QUICK = {"batch": ("batch_size", [8, 32]), "depth": ("decoder.depth", [1, 2]),
                 "image_tokens": ("data.resolution", [32, 64]), "text_tokens": ("data.max_len", [17, 33])}


def bench_scaling(*, quick: bool = False) -> dict:
    """Train-step time (cached image tokens, the quickstart's precision) as one setting grows and
    the others stay at the quickstart's (batch 128, depth 2, 64 image tokens, 35 text tokens), so
    a user sees how cost grows before sizing a study. Each point is the median of `repeats`
    timed steps after a compile, with its p10-p90 spread and its analytic GFLOP/s. `quick`
    scales the smoke configuration instead (seconds: it checks the machinery, not the machine)."""
    from litlab import config
    from litlab.configs import quickstart

    axes, repeats = (SCALING_QUICK, 2) if quick else (SCALING, 5)
    base = quickstart.get_config("smoke" if quick else None)
    vocab = Tokenizer().vocab_size
    rows = []
    for axis, (key, values) in axes.items():
        for value in values:
            c = config.override(base, {key: value})
            batch = c.batch_size
            step, state, arrays = train_step_setup(c, batch, vocab)
            fn, key_ = jax.jit(step, donate_argnums=0), jax.random.PRNGKey(0)
            stat = _time_alternately({"step": lambda st: fn(st, arrays, key_)}, {"step": state}, repeats)["step"]
            flops = config_flops(c, arrays, vocab)
            rows.append({"axis": axis, "value": value if axis != "image_tokens" else arrays["image_tokens"].shape[1],
                         "step_ms": round(1e3 * stat["median"], 1),
                         "step_ms_p10_p90": [round(1e3 * stat["p10"], 1), round(1e3 * stat["p90"], 1)],
                         "gflops": round(flops / stat["median"] / 1e9, 1)})
    return {"precision": base.matmul_precision, "rows": rows}


# Run in the child: its own peak RSS (VmHWM of the process image after exec). The kernel's
# ru_maxrss would also count the parent's pages at fork, i.e. the bench process's own size.
_PEAK_RSS_CHILD = """
import sys
from litlab import train
try:
    train.main(sys.argv[1:])
finally:
    kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print(f"peak_rss_kib={kib}", file=sys.stderr)
"""


def bench_memory(*, quick: bool = False) -> dict:
    """Peak resident memory (max RSS) of a quickstart-sized training run with its evaluation, in
    a fresh process: the figure that decides whether a study fits a Colab session. `quick` runs
    the smoke configuration."""
    import subprocess
    import tempfile

    from litlab import runs

    cfg = f"{runs.ROOT / 'litlab/configs/quickstart.py'}{':smoke' if quick else ''}"
    steps = 4 if quick else 50
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, "--config", cfg, "--workdir", workdir,
                               f"--config.total_steps={steps}"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    peak = re.findall(r"peak_rss_kib=(\d+)", proc.stderr)
    if proc.returncode or not peak:
        raise RuntimeError(f"memory suite: the training run failed:\n{proc.stderr[-2000:]}")
    return {"config": Path(cfg).name, "total_steps": steps, "peak_rss_gb": round(int(peak[-1]) / 2 ** 20, 2),
            "wall_s": round(wall, 1)}


def study_phases(results: str | Path) -> dict:
    """Seconds per phase summed over the runs under RESULTS/runs: setup (model, params, data),
    features (the frozen-feature cache), compile (the first step less one timed step), train,
    eval; and each run's compile seconds, to see whether later seeds reuse the compiled step."""
    records = [json.loads(p.read_text()) for p in sorted(Path(results, "runs").glob("*/result.json"))]
    phases, compiles = collections.Counter(), []
    for r in records:
        t = r["timings"]
        compiles.append(max(0.0, t["first_step"] - (1 / r["steps_per_s"] if r["steps_per_s"] else 0.0)))
        phases.update({"setup": t["setup"], "features": t["features"], "compile": compiles[-1],
                       "train": t["train"] + t["first_step"] - compiles[-1], "eval": t["eval"]})
    return {"runs": len(records), "phase_s": {k: round(v, 1) for k, v in phases.items()},
            "compile_s_per_run": [round(c, 2) for c in compiles]}


def bench_study(*, name: str = "specificity", quick: bool = False) -> dict:
    """Where a study's wall time goes (`study_phases`), at the fast setting (`quick`: smoke);
    `overhead_share` is setup + features + compile over the study's wall time: the part that is
    neither training nor evaluation. It runs into a fresh results folder, so no run is read back;
    the disk feature cache and XLA's compilation cache are shared as in any study."""
    import tempfile

    from litlab import study

    setting = "smoke" if quick else "fast"
    with tempfile.TemporaryDirectory() as results:
        t0 = time.perf_counter()
        study.run(name, setting, results=results, progress=False)
        wall = time.perf_counter() - t0
        out = study_phases(results)
    p = out["phase_s"]
    return {"study": name, "setting": setting, "wall_s": round(wall, 1), **out,
            "overhead_share": round((p["setup"] + p["features"] + p["compile"]) / wall, 3)}


def _big_vision_cappa_step(config, arrays: dict, vocab: int, checkout: Path):
    """(jitted step, state) of big_vision's own CapPa text decoder (`cappa.Decoder`, imported
    from the checkout) at `config`'s decoder dims, with litlab's loss (mean cross-entropy over
    the target tokens) and optimizer (`train.make_optimizer`; nothing to freeze) on the batch
    `arrays` from `train_step_setup`, whose cached image tokens its cross-attention reads at
    their own width."""
    import importlib

    import flax.linen as nn
    import optax

    from litlab import config as config_lib, train

    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    cappa = importlib.import_module("big_vision.models.proj.cappa.cappa")
    d, L = config.decoder, config.data.max_len - 1

    class CapPaDecoder(nn.Module):
        @nn.compact
        def __call__(self, image_tokens, targets):
            pos = self.param("pos_embedding_decoder", nn.initializers.normal(0.02), (1, L, d.width))
            return cappa.Decoder(emb_dim=d.width, mlp_dim=d.mlp_dim, num_heads=d.num_heads, num_layers=d.depth,
                                 output_vocab_size=vocab)(image_tokens, targets, pos,
                                                          decoder_mask=nn.make_causal_mask(targets))

    model = CapPaDecoder()
    params = model.init(jax.random.PRNGKey(0), arrays["image_tokens"][:1], arrays["tokens"][:1, 1:])["params"]
    tx, _ = train.make_optimizer(config_lib.override(config, {"encoder.trainable": True, "freeze": []}),
                                 params, train.make_schedule(config))

    def step(state, batch):
        params, opt_state = state
        targets, mask = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:]

        def loss_fn(p):  # cappa.Decoder shifts the targets right itself
            logits = model.apply({"params": p}, batch["image_tokens"], targets)
            tok = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            return jax.numpy.sum(tok * mask) / jax.numpy.maximum(jax.numpy.sum(mask), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0), (params, tx.init(params))


def bench_big_vision(*, quick: bool = False, checkout: str | None = None) -> dict:
    """litlab's train step against big_vision's CapPa decoder step at equal dims (the quickstart
    decoder: width 256, depth 2, batch 128, cached image tokens, float32), same loss and
    optimizer, timed alternately in this run. big_vision is not a dependency: this suite imports
    it from a checkout (`--big_vision DIR` or $BIG_VISION_DIR) and is skipped without one. Each
    step's FLOPs come from XLA's cost_analysis. Both read the 128-wide image tokens in each
    layer's cross-attention K/V (litlab folds its image projection into them)."""
    import os

    from litlab import config
    from litlab.configs import quickstart

    checkout = checkout or os.environ.get("BIG_VISION_DIR")
    if not checkout or not Path(checkout, "big_vision/models/proj/cappa/cappa.py").is_file():
        return {"skipped": f"no big_vision checkout at {checkout!r}: pass --big_vision DIR (a clone of "
                           "github.com/google-research/big_vision) or set BIG_VISION_DIR"}
    batch, repeats = (8, 3) if quick else (128, 15)
    base = quickstart.get_config("smoke" if quick else None)
    c = config.override(base, {"batch_size": batch, "matmul_precision": "float32"})
    vocab = Tokenizer().vocab_size
    step, state, arrays = train_step_setup(c, batch, vocab)
    litlab_fn = jax.jit(step, donate_argnums=0)
    key = jax.random.PRNGKey(0)
    bv_fn, bv_state = _big_vision_cappa_step(c, arrays, vocab, Path(checkout))
    bv_arrays = {k: arrays[k] for k in ("tokens", "loss_mask", "image_tokens")}

    litlab_exe, litlab_flops = compile_with_flops(litlab_fn, state, arrays, key)
    bv_exe, bv_flops = compile_with_flops(bv_fn, bv_state, bv_arrays)
    out = {"batch": batch, "litlab_xla_gflop": round(litlab_flops / 1e9, 3),
           "big_vision_xla_gflop": round(bv_flops / 1e9, 3),
           "litlab_analytic_gflop": round(config_flops(c, arrays, vocab) / 1e9, 3)}
    runners = {"litlab": lambda st: litlab_exe(st, arrays, key), "big_vision": lambda st: bv_exe(st, bv_arrays)}
    states = {"litlab": state, "big_vision": bv_state}
    for name, stat in _time_alternately(runners, states, repeats).items():
        out[f"{name}_step_ms"] = round(1e3 * stat["median"], 1)
        out[f"{name}_step_ms_p10_p90"] = [round(1e3 * stat["p10"], 1), round(1e3 * stat["p90"], 1)]
    out["litlab_speed_over_big_vision"] = round(out["big_vision_step_ms"] / out["litlab_step_ms"], 2)
    return out


SUITES = {"pipeline": bench_pipeline, "decode": bench_decode, "train": bench_train, "mfu": bench_mfu,
          "scaling": bench_scaling, "memory": bench_memory, "study": bench_study,
          "big_vision": bench_big_vision}


def machine() -> dict:
    """Where the figures came from: they only compare within one machine."""
    import os
    import platform

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind)}


def write_doc(path: Path, results: dict, argv: list[str]) -> None:
    """docs/benchmarks.md: the machine, every suite's figures, and the scaling chart beside it
    (an SVG), all from this one run."""
    m = machine()
    lines = ["# litlab benchmarks", "",
             f"Written by `python -m litlab.bench {' '.join(argv)}`. Figures compare only within this",
             "run: shared machines are noisy, so each ratio was measured side by side.", "",
             "| cpu | cores | backend | device | jax |", "| --- | --- | --- | --- | --- |",
             f"| {m['cpu']} | {m['cores']} | {m['backend']} | {m['device']} | {m['jax']} |", ""]
    for name, figures in results.items():
        lines += [f"## {name}", "", (SUITES[name].__doc__ or "").split("\n\n")[0].replace("\n    ", " ").strip(), ""]
        if name == "scaling":
            from litlab import plots

            svg = path.with_name(path.stem + "_scaling.svg")
            plots.scaling_chart(figures["rows"], figures["precision"]).save(str(svg))
            lines += [f"![train-step time against each setting]({svg.name})", "",
                      "| axis | value | step ms (median) | p10-p90 | GFLOP/s |", "| --- | --- | --- | --- | --- |"]
            lines += [f"| {r['axis']} | {r['value']} | {r['step_ms']} | {r['step_ms_p10_p90'][0]}-{r['step_ms_p10_p90'][1]} "
                      f"| {r['gflops']} |" for r in figures["rows"]]
            lines.append("")
        else:
            lines += ["```json", json.dumps(figures, indent=1), "```", ""]
    path.write_text("\n".join(lines))


def _isolated(name: str, args) -> dict:
    """One suite's figures, measured in a fresh process: what a suite leaves behind must not time
    the next one. Run after all the others in one process, `big_vision` measured litlab's step
    at 853 ms against 597 ms alone (0.73x big_vision's instead of 0.93x)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "suite.json"
        cmd = [sys.executable, "-m", "litlab.bench", name, "--json", str(out)] + (["--quick"] if args.quick else []) \
            + (["--big_vision", args.big_vision] if args.big_vision else [])
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if proc.returncode:
            raise SystemExit(f"bench suite {name!r} failed (exit {proc.returncode}); run `python -m litlab.bench "
                             f"{name}` alone to see why.")
        return json.loads(out.read_text())[name]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m litlab.bench", description=__doc__)
    ap.add_argument("suites", nargs="*", default=list(SUITES), help=f"any of {list(SUITES)}")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (suites that have them)")
    ap.add_argument("--json", metavar="FILE", help="also write every suite's figures to FILE")
    ap.add_argument("--doc", metavar="FILE", help="also write them as markdown with the machine and the "
                    "scaling chart (the README uses docs/benchmarks.md)")
    ap.add_argument("--big_vision", metavar="DIR", help="a big_vision checkout, for the big_vision suite "
                    "(default: $BIG_VISION_DIR)")
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    unknown = [n for n in args.suites if n not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {unknown}; choose from {list(SUITES)}")
    for flag, value in (("--json", args.json), ("--doc", args.doc)):  # before minutes of measuring
        if value and not Path(value).resolve().parent.is_dir():
            ap.error(f"{flag} {value}: folder {Path(value).resolve().parent} does not exist; create it first")
    results = {}
    for name in args.suites:
        if len(args.suites) > 1:
            results[name] = _isolated(name, args)
        else:
            params = inspect.signature(SUITES[name]).parameters
            kwargs = {"quick": True} if args.quick and "quick" in params else {}
            if args.big_vision and "checkout" in params:
                kwargs["checkout"] = args.big_vision
            results[name] = SUITES[name](**kwargs)
        print(json.dumps({name: results[name]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.doc:
        write_doc(Path(args.doc), results, argv)


if __name__ == "__main__":
    main()
