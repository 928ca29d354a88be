"""ipywidgets explorers: step through examples (and, later, decoded outputs) by hand."""

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
