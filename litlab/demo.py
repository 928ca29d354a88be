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

from litlab import config as config_lib, evaluate, report, train
from litlab.configs import quickstart

# The quickstart's targets on the test split (issue 10: an encoder that reads), printed next to
# what the run measured.
TARGETS = {"objects_cls": ("exact_match", 0.90), "scenes_vqa": ("vqa_accuracy", 0.75),
           "words_ocr": ("exact_match", 0.80), "scenes_caption": ("cider_d", 2.0),
           "text_vqa": ("vqa_accuracy", 0.60)}


def run(workdir: str | Path, *, config=None, progress: bool = True, overwrite: bool = False) -> dict:
    workdir = Path(workdir)
    config = config or quickstart.get_config()
    t0 = time.perf_counter()
    result = train.train(config, workdir, evaluators=evaluate.for_config(config, progress=progress),
                         progress=progress, overwrite=overwrite)
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
    ap.add_argument("--overwrite", action="store_true",
                    help="if the workdir holds a run with another config, move it aside and start anew")
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = config_lib.split_cli_overrides(argv)
        args = ap.parse_args(rest)
        config = config_lib.override(quickstart.get_config("smoke" if args.smoke else None), overrides,
                                     from_strings=True)
        out = run(args.workdir, config=config, overwrite=args.overwrite)
    except train.RUN_ERRORS as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        sys.exit(2)
    m, s = out["metrics"], out["summary"]
    print(report.table(m))
    if s["split"] == "test":  # the targets are the test split's
        print("\ntargets on the test split:")
        for task, (metric, target) in TARGETS.items():
            if task in m:
                value = m[task][metric]
                print(f"  {task:16s} {metric:14s} {value:7.3f}  target {target:5.2f}  {'met' if value >= target else 'NOT met'}")
    if config.eval_every and not (Path(out["report"]) / "scores.png").is_file():
        print(f"\nnote: eval_every={config.eval_every} scored one step only (it is not below total_steps, or the run "
              "had already finished and only resumed), so no scores.png; score a new run, e.g. in another --workdir.")
    print(f"\n{s['steps']} steps at {s['steps_per_s']} steps/s; wall time {s['wall_s']} s; report in {out['report']}")


if __name__ == "__main__":
    main()
