"""The README's main job (`make demo`): train the quickstart, evaluate every task, write a report.

Builds the quickstart mixture from the embedded benchmark, caches image features with the shipped
frozen encoder, trains a 2-layer decoder, decodes the test split of every task and writes
metrics, example predictions and a loss curve into the workdir. Rerunning with the same workdir
resumes from the last checkpoint instead of starting over.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from litlab import checkpoints, config as config_lib, evaluate, report, train
from litlab.configs import quickstart

# The quickstart's targets on the test split (issue 10: an encoder that reads), printed next to
# what the run measured.
TARGETS = {"objects_cls": ("exact_match", 0.90), "scenes_vqa": ("vqa_accuracy", 0.75),
           "words_ocr": ("exact_match", 0.80), "scenes_caption": ("cider_d", 2.0),
           "text_vqa": ("vqa_accuracy", 0.60)}


def run(workdir: str | Path, *, config=None, progress: bool = True) -> dict:
    workdir = Path(workdir)
    config = config or quickstart.get_config()
    t0 = time.perf_counter()
    result = train.train(config, workdir, evaluators=evaluate.for_config(config, progress=progress),
                         progress=progress)
    split = config.eval.split
    metrics = result.metrics[split]
    summary = {"split": split, "steps": config.total_steps, "steps_per_s": result.steps_per_s,
               "wall_s": round(time.perf_counter() - t0, 1)}
    out = report.write(workdir, summary, metrics, result.history, workdir / "eval" / split / "predictions.jsonl",
                       targets=TARGETS)
    return {"summary": summary, "metrics": metrics, "history": result.history, "report": str(out)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m litlab.demo", description=__doc__,
                                 epilog="Any quickstart key can be overridden as --config.KEY=VALUE, e.g. "
                                        "--config.total_steps=3000 --config.eval_every=500 (scores against steps).")
    ap.add_argument("--workdir", default="workdirs/demo")
    ap.add_argument("--smoke", action="store_true", help="the tiny smoke configuration (seconds, not minutes)")
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = config_lib.split_cli_overrides(argv)
        args = ap.parse_args(rest)
        config = config_lib.override(quickstart.get_config("smoke" if args.smoke else None), overrides,
                                     from_strings=True)
        out = run(args.workdir, config=config)
    except (checkpoints.WorkdirBusy, FloatingPointError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(2)
    m = out["metrics"]
    print(report.table(m))
    print("\ntargets on the test split:")
    for task, (metric, target) in TARGETS.items():
        if task in m:
            value = m[task][metric]
            print(f"  {task:16s} {metric:14s} {value:7.3f}  target {target:5.2f}  {'met' if value >= target else 'NOT met'}")
    s = out["summary"]
    print(f"\n{s['steps']} steps at {s['steps_per_s']} steps/s; wall time {s['wall_s']} s; report in {out['report']}")


if __name__ == "__main__":
    main()
