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


def curves_chart(curves: pd.DataFrame, title: str = "") -> alt.Chart:
    """Training loss against step for every arm (one line per seed), from `litlab.study.curves`."""
    arms = list(dict.fromkeys(curves.arm))
    return alt.Chart(curves, title=title or "training loss").mark_line().encode(
        x="step:Q", y=alt.Y("loss:Q", scale=alt.Scale(type="log")), color=alt.Color("arm:N", sort=arms),
        detail="seed:N", tooltip=["arm", "seed", "step", alt.Tooltip("loss:Q", format=".4f")])


def score_curves(scores: pd.DataFrame, targets: dict[str, tuple[str, float]] | None = None) -> alt.Chart:
    """Each task's score against training step, one panel per task (its own y scale), one line per
    split, decoding and number of images, from `litlab.report.score_history`; a task's target on
    the test split, when `targets` {task: (metric, value)} names that metric, is a dashed rule."""
    targets = targets or {}
    key = ["step", "split", "decode", "limit", "task", "metric", "family"]
    scores = scores.drop_duplicates(key)  # one checkpoint scored the same way in two folders
    data = scores.assign(
        series=[f"{s} ({d}, {n} images)" for s, d, n in zip(scores.split, scores.decode, scores.limit)],
        target=[targets[t][1] if s == "test" and targets.get(t, ("",))[0] == m else None
                for s, t, m in zip(scores.split, scores.task, scores.metric)])
    base = alt.Chart(data)
    lines = base.mark_line(point=True).encode(
        x=alt.X("step:Q"), y=alt.Y("value:Q", title="score"), color=alt.Color("series:N", title=None),
        tooltip=["task", "metric", "split", "step", alt.Tooltip("value:Q", format=".3f")])
    rule = base.transform_filter("isValid(datum.target)").mark_rule(strokeDash=[4, 4], color="gray").encode(
        y="target:Q", tooltip=["task", "metric", alt.Tooltip("target:Q", title="target")])
    return alt.layer(lines, rule).properties(width=220, height=150).facet(facet=alt.Facet("task:N", title=None), columns=3).resolve_scale(
        y="independent").properties(title="score against training step (primary metric; dashed: target)")


def study_chart(summary: pd.DataFrame, title: str = "") -> alt.Chart:
    """One panel per (split, task): each arm's mean over seeds with its 95% interval as an error
    bar, from `litlab.study.summarize` of the primary metrics."""
    data = summary.assign(lo=summary["mean"] - summary.ci95.fillna(0), hi=summary["mean"] + summary.ci95.fillna(0),
                          panel=summary.task + " (" + summary.metric + ")")
    arms = list(dict.fromkeys(data.arm))
    base = alt.Chart().encode(x=alt.X("arm:N", sort=arms, title=None))
    bars = base.mark_bar().encode(y=alt.Y("mean:Q", title="mean over seeds"), color=alt.Color("arm:N", sort=arms),
                                  tooltip=["arm", "task", "split", alt.Tooltip("mean:Q", format=".3f"),
                                           alt.Tooltip("ci95:Q", format=".3f", title="95% CI +/-"), "n"])
    # The same title on both layers, or altair joins them ("mean over seeds, lo").
    errors = base.mark_errorbar(ticks=True).encode(y=alt.Y("lo:Q", title="mean over seeds"), y2="hi:Q")
    return alt.layer(bars, errors, data=data).properties(width=110, height=120).facet(
        column=alt.Column("panel:N", title=None), row=alt.Row("split:N", title=None)).resolve_scale(
        y="independent").properties(title=title)


def scaling_chart(rows: list[dict], precision: str = "") -> alt.Chart:
    """Train-step time against each scaled setting (one panel per axis), from `litlab.bench`'s
    scaling suite: how cost grows with batch, depth, image tokens and text length."""
    data = pd.DataFrame([{**r, "lo": r["step_ms_p10_p90"][0], "hi": r["step_ms_p10_p90"][1]} for r in rows])
    base = alt.Chart().encode(x=alt.X("value:Q", title=None, scale=alt.Scale(type="log", base=2)))
    line = base.mark_line(point=True).encode(
        y=alt.Y("step_ms:Q", title="train step (ms)", scale=alt.Scale(type="log")),
        tooltip=["axis", "value", "step_ms", "gflops"])
    band = base.mark_errorbar().encode(y="lo:Q", y2="hi:Q")
    return alt.layer(line, band, data=data).facet(
        facet=alt.Facet("axis:N", title=None), columns=4,
        title=f"train-step time as one setting grows ({precision})").resolve_scale(x="independent")
