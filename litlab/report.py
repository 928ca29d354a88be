"""The run report: per-task table, metrics JSON, example predictions, a loss curve and, for a run
scored more than once (`eval_every`), each task's score against steps."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd

from litlab import plots

COLUMNS = ["step", "split", "decode", "limit", "task", "metric", "family", "value", "folder"]


def score_history(workdir: str | Path) -> pd.DataFrame:
    """Every finished evaluation in workdir/eval/, one row per (folder, task, metric, question
    family) with the step, split, decoding and images per task it was scored with: how far each
    task climbed with steps, which a final score alone does not show. The same checkpoint scored
    the same way in two folders (eval/test and eval/step_N/test of a run cut off at step N) gives
    equal rows; `plots.score_curves` draws them once. Only folders with an info.json count (it is
    written last); others (an evaluation cut off while writing, or written before litlab recorded
    the step) are skipped with a warning that counts them."""
    root = Path(workdir) / "eval"
    rows, skipped = [], []
    for path in sorted(root.glob("**/metrics.json")):
        info_path = path.with_name("info.json")
        if not info_path.is_file():
            skipped.append(str(path.parent))
            continue
        info = json.loads(info_path.read_text())
        for task, scores in json.loads(path.read_text()).items():
            for key, value in scores.items():
                metric, _, family = key.partition("/")
                rows.append({"step": info["step"], "split": info["split"], "decode": info["decode"],
                             "limit": info["limit"], "task": task, "metric": metric, "family": family or "all",
                             "value": value, "folder": str(path.parent.relative_to(root))})
    if skipped:
        warnings.warn(f"{len(skipped)} evaluation folder(s) without info.json skipped (cut off while writing, or "
                      f"written before litlab recorded the step scored): {skipped[:3]}")
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["split", "task", "metric", "family", "step", "folder"],
                                                           ignore_index=True)


def table(results: dict) -> str:
    """A plain-text table: one row per task, one column per metric (per-family scores, named
    "metric/family", stay in metrics.json)."""
    cols = sorted({m for r in results.values() for m in r if "/" not in m})
    lines = [f"{'task':16s}" + "".join(f"{c:>20s}" for c in cols)]
    for task, r in results.items():
        lines.append(f"{task:16s}" + "".join(f"{r[c]:20.4f}" if c in r else f"{'':20s}" for c in cols))
    return "\n".join(lines)


def write(workdir: str | Path, run_summary: dict, results: dict, history: list[dict], predictions: Path,
          examples_per_task: int = 5, targets: dict[str, tuple[str, float]] | None = None) -> Path:
    """Writes workdir/report/{report.json, examples.json, loss.html, loss.png} and, when the run
    was scored at more than one step, scores.{csv,html,png} (each task's primary metric against
    steps, with its target from `targets` {task: (metric, value)} as a dashed rule); returns the
    folder."""
    out = Path(workdir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({**run_summary, "metrics": results}, indent=2))
    examples: dict[str, list] = {}
    for line in Path(predictions).read_text().splitlines():
        row = json.loads(line)
        if len(examples.setdefault(row["task"], [])) < examples_per_task:
            examples[row["task"]].append(row)
    (out / "examples.json").write_text(json.dumps(examples, indent=2))
    if history:
        chart = plots.loss_curve(history)
        chart.save(str(out / "loss.html"))
        chart.save(str(out / "loss.png"), scale_factor=1.5)
    for stale in out.glob("scores.*"):  # from an earlier report of this workdir; redrawn below if still true
        stale.unlink()
    scores = score_history(workdir)
    if scores.step.nunique() > 1:
        scores.to_csv(out / "scores.csv", index=False)
        from litlab.study import primary  # each task's primary metric, as a study's chart draws it
        chart = plots.score_curves(primary(scores), targets)
        chart.save(str(out / "scores.html"))
        chart.save(str(out / "scores.png"), scale_factor=1.5)
    return out
