"""`python -m litlab.bench`: the performance suite. Figures are measured here, never asserted in
tests, because shared machines are noisy; comparisons are made side by side in one run."""

from __future__ import annotations

import argparse
import json
import time

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


def bench_decode(*, batch_sizes=(1, 64), new_tokens: int = 32, min_seconds: float = 1.0) -> dict:
    """Greedy decoding throughput (generated tokens/s) with the KV cache and with full
    recomputation, side by side, per conditioning, after a warm-up compile.

    A quickstart-size decoder (depth 2, width 256, 4 heads, MLP 1024, vocab 1000, max_len 48)
    with init weights reads 64 random image tokens of width 192 after prompts of 4-16 tokens.
    eos_id=None makes every example generate all `new_tokens`, so both variants do the same work
    whatever the untrained model emits; "same_tokens" checks that they also agree. Each figure is
    the fastest of the calls made in `min_seconds`: the least disturbed one on a shared machine.
    """
    enc = dict(patch_size=(8, 8), width=192, depth=1, mlp_dim=384, num_heads=3)
    rng = np.random.default_rng(0)
    out = {"device": str(jax.devices()[0].device_kind)}
    for cond in ("cross", "prefix", "pooled"):
        dec = dict(vocab_size=1000, width=256, depth=2, num_heads=4, mlp_dim=1024, max_len=48,
                   conditioning=cond)
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
            out[f"{cond}_batch{batch}"] = row
    return out


def bench_train(*, steps: int = 20, limit: int = 256) -> dict:
    """Quickstart-size train steps/s with the frozen-feature cache vs the encoder in the loop,
    and float32 vs bfloat16 matmuls, side by side (compilation excluded)."""
    import tempfile

    from litlab import config, train
    from litlab.configs import quickstart

    out = {}
    for name, overrides in (("cached_bf16", {}), ("encoder_in_loop_bf16", {"feature_cache": "none"}),
                            ("cached_f32", {"matmul_precision": "float32"})):
        c = config.override(quickstart.get_config(), {
            "total_steps": steps, "checkpoint_every": steps, "log_every": steps, "data.limit": limit, **overrides})
        with tempfile.TemporaryDirectory() as workdir:
            out[f"{name}_steps_per_s"] = train.train(c, workdir, progress=False).steps_per_s
    out["cache_speedup"] = round(out["cached_bf16_steps_per_s"] / out["encoder_in_loop_bf16_steps_per_s"], 2)
    out["bf16_speedup"] = round(out["cached_bf16_steps_per_s"] / out["cached_f32_steps_per_s"], 2)
    return out


SUITES = {"pipeline": bench_pipeline, "decode": bench_decode, "train": bench_train}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m litlab.bench", description=__doc__)
    ap.add_argument("suites", nargs="*", default=list(SUITES), help=f"any of {list(SUITES)}")
    args = ap.parse_args(argv)
    for name in args.suites:
        print(json.dumps({name: SUITES[name]()}))


if __name__ == "__main__":
    main()
