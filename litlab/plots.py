"""Altair charts for what people would rather look at than read."""

from __future__ import annotations

import altair as alt
import pandas as pd


def mixture_proportions(stats: dict) -> alt.Chart:
    """Asked vs realized task rates of a mixture, from `litlab.data.pipeline.describe`."""
    rows = [{"task": name, "kind": kind, "proportion": t[key]}
            for name, t in stats["tasks"].items()
            for kind, key in (("asked", "rate"), ("realized", "realized"))]
    return alt.Chart(pd.DataFrame(rows), title=f"{stats['mixture']}: task proportions "
                     f"({stats['batches']} batches of {stats['batch_size']})").mark_bar().encode(
        x=alt.X("kind:N", title=None), y=alt.Y("proportion:Q", title="share of examples"),
        color="kind:N", column=alt.Column("task:N", title=None),
        tooltip=["task", "kind", alt.Tooltip("proportion:Q", format=".3f")])


def loss_curve(history: list[dict]) -> alt.Chart:
    """Training loss overall and per task, from a run's logged metrics."""
    rows = [{"step": h["step"], "series": k.split("/", 1)[1] if "/" in k else "all tasks", "loss": v}
            for h in history for k, v in h.items() if k == "loss" or k.startswith("loss/")]
    return alt.Chart(pd.DataFrame(rows), title="training loss").mark_line().encode(
        x="step:Q", y=alt.Y("loss:Q", scale=alt.Scale(type="log")), color="series:N",
        tooltip=["step", "series", alt.Tooltip("loss:Q", format=".4f")])
