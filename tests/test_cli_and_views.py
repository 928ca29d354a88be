import json

import numpy as np
import pytest
from PIL import Image

from litlab import plots, widgets
from litlab.data import __main__ as cli
from litlab.data import tasks


def test_preview_writes_a_labelled_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["preview", "--task", "scenes_vqa", "--split", "val", "-n", "6", "--out", str(out)]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape[0] > 2 * 192 and img.shape[1] >= 4 * 192
    assert (img < 50).any()  # labels were drawn in dark ink


def test_stats_prints_json_with_proportions(capsys):
    assert cli.main(["stats", "--mixture", "all_uniform", "--batches", "8", "--batch-size", "32", "--limit", "12"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["tasks"]) == {"objects_cls", "scenes_caption", "scenes_vqa", "words_ocr", "text_vqa"}
    assert sum(t["realized"] for t in stats["tasks"].values()) == pytest.approx(1.0)
    assert all(t["examples"] > 0 for t in stats["tasks"].values())


@pytest.mark.parametrize("argv,match", [
    (["preview", "--task", "nope", "--out", "x.png"], "unknown task 'nope'"),
    (["stats", "--mixture", "nope"], "unknown mixture 'nope'"),
])
def test_cli_errors_are_one_clear_line(argv, match, capsys):
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err


def test_mixture_chart_and_task_browser():
    stats = {"mixture": "m", "batches": 2, "batch_size": 4,
             "tasks": {"a": {"rate": 0.5, "realized": 0.4}, "b": {"rate": 0.5, "realized": 0.6}}}
    spec = plots.mixture_proportions(stats).to_dict()
    assert spec["mark"]["type"] == "bar" and len(spec["datasets"][next(iter(spec["datasets"]))]) == 4
    ts = tasks.load_task("words_ocr", "val", limit=3)
    w = widgets.task_browser({"words_ocr": ts})
    slider = w.children[0].children[1]
    html = w.children[1].children[1]
    slider.value = 2
    assert repr(ts.turns[2][0][1]) in html.value
