"""ipywidgets explorers: step through examples, decoded outputs, and a study's arms side by side."""

from __future__ import annotations

import io

import ipywidgets as widgets
from PIL import Image

from litlab.data import tasks

VIEW_SIZE = 256


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).resize((VIEW_SIZE, VIEW_SIZE), Image.Resampling.NEAREST).save(buf, "PNG")
    return buf.getvalue()


def _matches(prediction: str, references: list[str]) -> bool:
    return prediction.strip().lower() in {r.strip().lower() for r in references}


def task_browser(splits: dict[str, tasks.TaskSplit]) -> widgets.Widget:
    """A task dropdown and an example slider showing the image, prompt, target and references."""
    if not splits:
        raise ValueError("task_browser needs at least one loaded task split.")
    pick = widgets.Dropdown(options=list(splits), description="task")
    index = widgets.IntSlider(0, 0, len(next(iter(splits.values()))) - 1, description="example")
    image = widgets.Image(format="png", width=VIEW_SIZE, height=VIEW_SIZE)
    text = widgets.HTML()

    def show(*_):
        ts = splits[pick.value]
        index.max = len(ts) - 1
        i = min(index.value, index.max)
        image.value = _png(ts.images[ts.image_index[i]])
        turns = "".join(f"<li><b>prompt</b> {p!r} &rarr; <b>target</b> {t!r}</li>" for p, t in ts.turns[i])
        refs = ", ".join(repr(r) for r in ts.references[i][:10])
        text.value = f"<ul>{turns}</ul><p><b>references</b>: {refs}</p><p><i>{ts.image_keys[ts.image_index[i]]}</i></p>"

    pick.observe(show, "value")
    index.observe(show, "value")
    show()
    return widgets.VBox([widgets.HBox([pick, index]), widgets.HBox([image, text])])


def prompt_explorer(model, params, tok, splits: dict[str, tasks.TaskSplit],
                    methods=("greedy", "beam:4", "sample:t=0.8,k=20")) -> widgets.Widget:
    """Pick an example, edit its prompt (or write your own), choose a decoding method, generate.
    A model that reads the question as memory gets a question box beside the prompt."""
    from litlab import prompting

    memory = model.decoder_cfg.get("question_len", 0) > 0
    question = widgets.Text(description="question", layout=widgets.Layout(width="40%"))
    pick = widgets.Dropdown(options=list(splits), description="task")
    index = widgets.IntSlider(0, 0, len(next(iter(splits.values()))) - 1, description="example")
    prompt = widgets.Text(description="prompt", layout=widgets.Layout(width="60%"))
    method = widgets.Dropdown(options=list(methods), description="decode")
    go = widgets.Button(description="Generate", button_style="primary")
    image = widgets.Image(format="png", width=VIEW_SIZE, height=VIEW_SIZE)
    out = widgets.HTML()

    def current():
        ts = splits[pick.value]
        index.max = len(ts) - 1
        return ts, min(index.value, index.max)

    def show(*_):
        ts, i = current()
        image.value = _png(ts.images[ts.image_index[i]])
        prompt.value = ts.turns[i][0][0]
        question.value = ts.questions[i] if ts.questions else ""
        out.value = f"<p><b>references</b>: {', '.join(repr(r) for r in ts.references[i][:10])}</p>"

    def generate(*_):
        ts, i = current()
        try:
            text = repr(prompting.answer(model, params, tok, ts.images[ts.image_index[i]][None], [prompt.value],
                                         method=method.value, questions=[question.value] if memory else None)[0])
        except ValueError as e:  # e.g. a prompt too long for the model: say so in the widget
            text = f"<span style='color:#b00'>{e}</span>"
        out.value = (f"<p><b>model</b>: {text}</p>"
                     f"<p><b>references</b>: {', '.join(repr(r) for r in ts.references[i][:10])}</p>")

    pick.observe(show, "value")
    index.observe(show, "value")
    go.on_click(generate)
    show()
    controls = [prompt, method, go] + ([question] if memory else [])
    return widgets.VBox([widgets.HBox([pick, index]), widgets.HBox(controls), widgets.HBox([image, out])])


def _browser(task_names, filter_label: str, select, render, images, unit: str) -> widgets.Widget:
    """A task dropdown, a filter checkbox and a slider over `select(task, filtered)`'s items;
    `render(item)` gives (image id, HTML)."""
    pick = widgets.Dropdown(options=task_names, description="task")
    only = widgets.Checkbox(False, description=filter_label)
    index = widgets.IntSlider(0, 0, 0, description=unit)
    text = widgets.HTML()
    image = widgets.Image(format="png", width=VIEW_SIZE, height=VIEW_SIZE)

    def show(*_):
        sel = select(pick.value, only.value)
        index.max = max(len(sel) - 1, 0)
        if not sel:
            text.value = "<p>no rows</p>"
            return
        image_id, html = render(sel[min(index.value, index.max)])
        if images and image_id in images:
            image.value = _png(images[image_id])
        text.value = html + f"<p>{len(sel)} rows</p>"

    for w in (pick, only, index):
        w.observe(show, "value")
    show()
    return widgets.VBox([widgets.HBox([pick, only, index]), widgets.HBox([image, text])])


def predictions_browser(rows: list[dict], images: dict[str, object] | None = None) -> widgets.Widget:
    """Step through decoded outputs (rows of predictions.jsonl), optionally only the wrong ones."""
    if not rows:
        raise ValueError("predictions_browser needs at least one prediction row.")

    def select(task, only_wrong):
        return [r for r in rows if r["task"] == task and not (only_wrong and _matches(r["prediction"], r["references"]))]

    def render(r):
        return r["image_id"], (f"<p><i>{r['image_id']}</i></p><p><b>prompt</b> {r['prompt']!r}</p>"
                               f"<p><b>prediction</b> {r['prediction']!r}</p>"
                               f"<p><b>references</b> {', '.join(repr(x) for x in r['references'][:10])}</p>")

    return _browser(sorted({r["task"] for r in rows}), "only mismatches", select, render, images, "row")


def arm_comparison(predictions: dict[str, list[dict]], images: dict[str, object] | None = None) -> widgets.Widget:
    """The same example as every arm of a study decoded it, side by side (from
    `litlab.study.predictions`); optionally only the examples where the arms disagree."""
    if not predictions or not all(predictions.values()):
        raise ValueError("arm_comparison needs decoded rows for at least one arm.")
    arms = list(predictions)
    first = predictions[arms[0]]
    for arm in arms[1:]:
        if [(r["task"], r["image_id"], r.get("family")) for r in predictions[arm]] != \
                [(r["task"], r["image_id"], r.get("family")) for r in first]:
            raise ValueError(f"arm {arm!r} was evaluated on other examples than {arms[0]!r}; arms of one study "
                             "must share their evaluation data (same data.seed and eval.limit).")

    def select(task, disagree):
        return [i for i, r in enumerate(first) if r["task"] == task
                and not (disagree and len({predictions[a][i]["prediction"] for a in arms}) == 1)]

    def render(i):
        r = first[i]
        cells = "".join(
            f"<tr><td><b>{a}</b></td><td>{predictions[a][i]['prompt']!r}</td>"
            f"<td style='color:{'#070' if _matches(predictions[a][i]['prediction'], r['references']) else '#b00'}'>"
            f"{predictions[a][i]['prediction']!r}</td></tr>" for a in arms)
        return r["image_id"], (f"<p><i>{r['image_id']}</i> · family <b>{r.get('family', '')}</b></p>"
                               f"<table><tr><th>arm</th><th>prompt</th><th>prediction</th></tr>{cells}</table>"
                               f"<p><b>references</b> {', '.join(repr(x) for x in r['references'][:10])}</p>")

    return _browser(sorted({r["task"] for r in first}), "only disagreements", select, render, images, "example")
