import json
import shutil

import numpy as np
import pandas as pd
import pytest

from litlab import checkpoints, demo, evaluate, plots, prompting, report, runs, study, widgets
from litlab.configs import quickstart
from litlab.data import tasks


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    config = quickstart.get_config("smoke")
    config.eval_every = 3  # scored at step 3 and at the end (6): the report's curves against steps
    out = demo.run(workdir, config=config, progress=False)
    return workdir, out


def test_score_predictions_uses_each_metric():
    refs = [["two"] * 10, ["red"] * 7 + ["dark red"] * 3]
    m = evaluate.score_predictions(("vqa_accuracy", "exact_match", "anls"), ["2", "dark red"], refs)
    # Official rule: unanimous answers are not normalized ("2" != "two": 0); 3 of 10 match: 0.9.
    assert m["vqa_accuracy"] == pytest.approx((0.0 + 0.9) / 2)
    assert m["exact_match"] == pytest.approx(0.5)
    assert evaluate.score_predictions(("cer",), ["cat"], [["car"]])["cer"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        evaluate.score_predictions(("bleu",), ["a"], [["a"]])
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        evaluate.score_predictions(("exact_match",), ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"examples \[0\] have no references"):
        evaluate.score_predictions(("exact_match",), ["a"], [[]])


def test_tasks_of_a_split_share_one_decode_shape_unless_beam_or_too_long():
    from types import SimpleNamespace

    from litlab import evaluate
    enc = lambda name, prompts, answers: SimpleNamespace(
        name=name, prefix_len=np.array(prompts), loss_mask=np.array([[1.0] * a + [0.0] * (9 - a) for a in answers]))
    encs = [enc("cls", [5, 4], [3, 2]), enc("vqa", [12, 9], [2, 2]), enc("cap", [4, 4], [9, 7])]
    shared = evaluate.decode_shapes(encs, 36, "greedy")
    assert shared == {"cls": (12, 11, 5), "vqa": (12, 11, 4), "cap": (12, 11, 11)}
    assert evaluate.decode_shapes(encs, 36, "sample:t=0.8") == shared
    own = {"cls": (5, 5, 5), "vqa": (12, 4, 4), "cap": (4, 11, 11)}
    assert evaluate.decode_shapes(encs, 36, "beam:2") == own  # beam ranks by length: its own budget
    assert evaluate.decode_shapes(encs, 22, "greedy") == own  # 12 + 11 > 22: no shared shape


def test_demo_writes_metrics_predictions_and_report(smoke_run):
    workdir, out = smoke_run
    metrics = json.loads((workdir / "eval" / "test" / "metrics.json").read_text())
    assert set(metrics) == {"objects_cls", "scenes_caption", "scenes_vqa", "words_ocr", "text_vqa"}
    assert "exact_match_scoring" in metrics["objects_cls"] and "cider_d" in metrics["scenes_caption"]
    rows = [json.loads(l) for l in (workdir / "eval" / "test" / "predictions.jsonl").read_text().splitlines()]
    assert {"task", "image_id", "prompt", "family", "prediction", "references"} <= set(rows[0])
    assert out["metrics"] == metrics  # train() returns what it wrote
    vqa = metrics["scenes_vqa"]
    families = {k.split("/")[1] for k in vqa if k.startswith("vqa_accuracy/")}
    assert families and families <= {"attribute", "count", "existence", "spatial", "comparison"}
    assert {r["family"] for r in rows if r["task"] == "scenes_vqa"} == families
    n = quickstart.get_config("smoke").eval.limit
    assert sum(r["task"] == "objects_cls" for r in rows) == n
    assert (workdir / "report" / "loss.png").stat().st_size > 1000
    assert json.loads((workdir / "report" / "report.json").read_text())["metrics"] == metrics
    assert "objects_cls" in report.table(metrics)


def test_report_plots_scores_against_steps(smoke_run, tmp_path, monkeypatch):
    workdir, out = smoke_run
    scores = report.score_history(workdir)
    assert sorted(scores.step.unique()) == [3, 6] and set(scores.split) == {"test"}
    assert set(scores.decode) == {"greedy"}
    final = scores[scores.step == 6]
    for task, m in out["metrics"].items():  # the last point is the run's final evaluation
        for key, value in m.items():
            metric, _, family = key.partition("/")
            row = final[(final.task == task) & (final.metric == metric) & (final.family == (family or "all"))]
            assert row.value.tolist() == [value]
    assert set(scores[scores.step == 3].task) == set(out["metrics"])
    assert pd.read_csv(workdir / "report" / "scores.csv").shape == scores.shape
    assert (workdir / "report" / "scores.png").stat().st_size > 1000
    chart = plots.score_curves(study.primary(scores), demo.TARGETS).to_dict()
    drawn = pd.DataFrame(chart["datasets"][next(iter(chart["datasets"]))])
    targets = drawn.dropna(subset=["target"]).groupby("task").target.first().to_dict()
    assert targets == {t: v for t, (_, v) in demo.TARGETS.items()}  # each task's rule at its own target
    # A target on another metric than the one drawn is not drawn.
    other = plots.score_curves(study.primary(scores), {"words_ocr": ("cer", 0.1)}).to_dict()
    assert pd.DataFrame(other["datasets"][next(iter(other["datasets"]))]).target.isna().all()
    # The same checkpoint scored the same way in two folders is drawn once; targets only on test.
    for folder in ("test", "step_6/test"):
        shutil.copytree(workdir / "eval" / "test", tmp_path / "copy" / "eval" / folder)
    comp = tmp_path / "copy" / "eval" / "compositional"
    shutil.copytree(workdir / "eval" / "test", comp)
    (comp / "info.json").write_text(json.dumps({"step": 6, "split": "compositional", "decode": "greedy", "limit": 4}))
    twice = report.score_history(tmp_path / "copy")
    assert len(twice) == 3 * len(final) and set(twice.folder) == {"test", "step_6/test", "compositional"}
    chart = plots.score_curves(study.primary(twice), demo.TARGETS).to_dict()
    drawn = pd.DataFrame(chart["datasets"][next(iter(chart["datasets"]))])
    assert len(drawn) == 2 * len(study.primary(final))
    assert drawn[drawn.split == "compositional"].target.isna().all()
    # A reused folder whose new write is cut off loses its old info.json, so its new metrics are
    # never labelled with the old step: the folder is skipped, and counted.
    def fail_on_info(path, text, _write=checkpoints.write_atomic):
        if path.name == "info.json":
            raise OSError("disk full")
        _write(path, text)
    with monkeypatch.context() as m:
        m.setattr(checkpoints, "write_atomic", fail_on_info)
        with pytest.raises(OSError):
            evaluate.write(tmp_path / "copy", "test", {"objects_cls": {"exact_match": 0.99}}, [], {"step": 99})
    with pytest.warns(UserWarning, match="1 evaluation folder"):
        assert 0.99 not in report.score_history(tmp_path / "copy").value.tolist()


def test_evaluate_cli_reloads_the_workdir(smoke_run, capsys):
    workdir, _ = smoke_run
    assert evaluate.main(["--workdir", str(workdir), "--split", "compositional", "--decode", "beam:2",
                          "--limit", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["split"] == "compositional" and printed["step"] == quickstart.get_config("smoke").total_steps
    # A rescoring with its own decoding and limit gets its own folder, beside the run's own scores.
    assert printed["eval_dir"] == str(workdir / "eval" / "compositional-beam_2-limit2")
    assert json.loads((workdir / "eval" / "compositional-beam_2-limit2" / "info.json").read_text()) == {
        "step": printed["step"], "split": "compositional", "decode": "beam:2", "limit": 2}
    assert evaluate.folder_name("test", None, None) == "test"
    assert evaluate.folder_name("val", "beam:4,alpha=0.6", None) == "val-beam_4_alpha_0.6"


def test_evaluate_cli_errors(tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    assert "config.json not found: is" in capsys.readouterr().err


def test_prompting_and_widgets(smoke_run):
    workdir, _ = smoke_run
    run = runs.load(workdir)
    model, params, tok = run.model, run.params, run.tokenizer
    ts = tasks.load_task("scenes_vqa", "test", limit=2)
    imgs = ts.images[ts.image_index[:2]]
    a = prompting.answer(model, params, tok, imgs, ["how many circles are there?", "what color?"], max_new_tokens=4)
    b = prompting.answer(model, params, tok, imgs[:1], ["how many circles are there?"], max_new_tokens=4)
    assert len(a) == 2 and a[0] == b[0]  # batch neighbours do not change an answer
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        prompting.answer(model, params, tok, imgs, ["x"])
    with pytest.raises(ValueError, match="shorten the prompt"):
        prompting.answer(model, params, tok, imgs[:1], ["word " * 60])
    w = widgets.prompt_explorer(model, params, tok, {"scenes_vqa": ts})
    go, out = w.children[1].children[2], w.children[2].children[1]
    go.click()
    assert "<b>model</b>: '" in out.value
    w.children[1].children[0].value = "word " * 60
    go.click()
    assert "shorten the prompt" in out.value
    rows = [json.loads(l) for l in (workdir / "eval" / "test" / "predictions.jsonl").read_text().splitlines()]
    pb = widgets.predictions_browser(rows)
    assert "prediction" in pb.children[1].children[1].value


def test_demo_cli_takes_config_overrides(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(["--smoke", "--workdir", str(tmp_path / "bad"), "--config.total_stepz=4"])
    assert e.value.code == 2 and "total_stepz" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    w = ["--smoke", "--workdir", str(tmp_path / "w")]
    demo.main(w + ["--config.total_steps=4"])
    assert "4 steps at" in capsys.readouterr().out
    # eval_every on a finished run only resumes it: one evaluation, no curve, and the user is told.
    demo.main(w + ["--config.total_steps=4", "--config.eval_every=2"])
    assert "scored one step only" in capsys.readouterr().out
    assert not (tmp_path / "w" / "report" / "scores.png").exists()
    with pytest.raises(SystemExit) as e:  # another total_steps is another experiment
        demo.main(w + ["--config.total_steps=6", "--config.eval_every=2"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    demo.main(w + ["--config.total_steps=6", "--config.eval_every=2", "--overwrite"])
    assert "scored one step only" not in capsys.readouterr().out
    assert sorted(pd.read_csv(tmp_path / "w" / "report" / "scores.csv").step.unique()) == [2, 4, 6]
    assert len(list(tmp_path.glob("w.replaced-*"))) == 1  # the 4-step run, moved aside, not lost
