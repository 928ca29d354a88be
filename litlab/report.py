"""The run report: per-task table, metrics JSON, example predictions and a loss curve."""

from __future__ import annotations

import json
from pathlib import Path

from litlab import plots



def table(results: dict) -> str:
    """A plain-text table: one row per task, one column per metric (per-family scores, named
    "metric/family", stay in metrics.json)."""
    cols = sorted({m for r in results.values() for m in r if "/" not in m})
    lines = [f"{'task':16s}" + "".join(f"{c:>20s}" for c in cols)]
    for task, r in results.items():
        lines.append(f"{task:16s}" + "".join(f"{r[c]:20.4f}" if c in r else f"{'':20s}" for c in cols))
    return "\n".join(lines)


def write(workdir: str | Path, run_summary: dict, results: dict, history: list[dict], predictions: Path,
          examples_per_task: int = 5) -> Path:
    """Writes workdir/report/{report.json, examples.json, loss.html, loss.png}; returns the folder."""
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
    return out
