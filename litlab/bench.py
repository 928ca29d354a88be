"""`python -m litlab.bench`: the performance suite. Figures are measured here, never asserted in
tests, because shared machines are noisy; comparisons are made side by side in one run."""

from __future__ import annotations

import argparse
import json
import time

from litlab.data import mixtures, pipeline
from litlab.data.tokenizer import Tokenizer


def bench_pipeline(*, batch_size: int = 256, steps: int = 60, limit: int = 2000, max_len: int = 48) -> dict:
    """Examples/s that the tf.data pipeline delivers for the default mixture at 64x64 (float32
    images in [-1, 1], tokens, masks), measured after a warm-up, and without pixels (cache mode)."""
    data = pipeline.build(mixtures.get_mixture("all_temperature"), "train", Tokenizer(),
                          max_len=max_len, limit=limit)
    out = {}
    for with_images in (True, False):
        it = pipeline.train_dataset(data, batch_size, seed=0, with_images=with_images).as_numpy_iterator()
        for _ in range(5):
            next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        dt = time.perf_counter() - t0
        out["examples_per_s" + ("" if with_images else "_no_images")] = round(steps * batch_size / dt, 1)
    return out


SUITES = {"pipeline": bench_pipeline}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m litlab.bench", description=__doc__)
    ap.add_argument("suites", nargs="*", default=list(SUITES), help=f"any of {list(SUITES)}")
    args = ap.parse_args(argv)
    for name in args.suites:
        print(json.dumps({name: SUITES[name]()}))


if __name__ == "__main__":
    main()
