"""The study runner: one folder per resolved config, read-back, resume, encode-once, the tables."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from litlab import config as config_lib, features, plots, runs, study
from litlab.configs.studies import _settings

ROOT = Path(__file__).resolve().parents[1]


def tiny(name="tiny", arms=None, seeds=(0, 1), **extra):
    """A smoke-setting study over conditioning types, small enough for the test suite."""
    arms = arms or {c: {"decoder.conditioning": c} for c in ("cross", "prefix", "pooled")}
    smoke = study.Setting(_settings.SMOKE.base, {**_settings.SMOKE.overrides, **extra}, seeds)
    return study.Study(name, "which conditioning?", arms, next(iter(arms)),
                       {"smoke": smoke, "fast": smoke, "full": smoke})


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """An empty render and feature cache, so encoder calls can be counted from zero."""
    old = os.environ["LITLAB_CACHE"]
    os.environ["LITLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    os.environ["LITLAB_CACHE"] = old


@pytest.fixture(scope="module")
def smoke_study(fresh_cache, tmp_path_factory):
    """A 3-arm x 2-seed study, with every image the encoder sees counted."""
    encoded = []
    real = features.encode_all

    def counting(encode, images, *a, **k):
        encoded.append(len(images))
        return real(encode, images, *a, **k)

    features.encode_all = counting
    try:
        results = tmp_path_factory.mktemp("results")
        s = tiny()
        table = study.run(s, "smoke", results=results, progress=False)
    finally:
        features.encode_all = real
    return s, table, results, encoded


def test_each_image_is_encoded_once_per_study(smoke_study, tok):
    s, _, _, encoded = smoke_study
    config = s.configs("smoke")[0][2]
    distinct = len(runs.load_data(config, tok, "train").images)
    for split in s.splits:
        distinct += len(runs.load_data(config, tok, split, limit=config.eval.limit).images)
    assert sum(encoded) == distinct, f"encoded {encoded} for {distinct} distinct images over 6 runs"


def test_one_folder_per_resolved_config_and_a_tidy_table(smoke_study):
    s, table, results, _ = smoke_study
    digests = {study.run_dir(c, results).name for _, _, c in s.configs("smoke")}
    assert len(digests) == 6
    assert {p.name for p in (results / "runs").iterdir()} == digests
    assert set(table.columns) >= {"arm", "seed", "split", "task", "metric", "family", "value", "steps",
                                  "wall_s", "params"}
    assert set(table.arm) == {"cross", "prefix", "pooled"} and set(table.seed) == {0, 1}
    assert set(table.split) == {"test", "compositional"}
    assert set(table.task) == {"objects_cls", "scenes_caption", "scenes_vqa", "words_ocr", "text_vqa"}
    assert (table.steps == 4).all()
    # prefix has no cross-attention blocks, so it trains fewer parameters than cross.
    params = table.groupby("arm").params.first()
    assert params["prefix"] < params["cross"] == params["pooled"]
    # Per-family VQA scores are rows of their own.
    vqa = table[(table.task == "scenes_vqa") & (table.metric == "vqa_accuracy")]
    assert "all" in set(vqa.family) and len(set(vqa.family)) > 2
    out = results / "tiny" / "smoke"
    for name in ("table.csv", "summary.csv", "differences.csv", "findings.txt", "chart.png"):
        assert (out / name).stat().st_size > 0, name
    pd.testing.assert_frame_equal(study.read(s, "smoke", results=results), table, check_dtype=False)


def test_learning_curves_come_from_every_run_of_the_study(smoke_study, tmp_path):
    s, _, results, _ = smoke_study
    curves = study.curves(s, "smoke", results=results)
    assert set(curves.arm) == set(s.arms) and set(curves.seed) == {0, 1}
    assert curves.groupby(["arm", "seed"]).step.apply(list).map(lambda steps: steps == [2, 4]).all()
    assert np.isfinite(curves.loss).all() and (curves.loss > 0).all()
    assert plots.curves_chart(curves).to_dict()["encoding"]["detail"]["field"] == "seed"
    with pytest.raises(FileNotFoundError, match="run the study first"):
        study.curves(s, "smoke", results=tmp_path)


def test_a_cotraining_arm_plots_the_loss_of_the_task_it_is_scored_on(tmp_path):
    s = study.load("image_tokens")
    for arm, seed, config in s.configs("smoke", arms=("encoder", "encoder_cotrain")):
        d = study.run_dir(config, tmp_path)
        d.mkdir(parents=True)
        rows = [{"step": 2, "loss": 9.0, "loss/scenes_vqa_existence": 0.3, "loss/scenes_caption": 17.7},
                {"step": 4, "loss": 8.0, "loss/scenes_caption": 16.0}]  # a batch without the family
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = study.curves(s, "smoke", results=tmp_path).set_index(["arm", "step"]).loss
    assert curves[("encoder_cotrain", 2)].tolist() == [0.3, 0.3] and ("encoder_cotrain", 4) not in curves.index
    assert curves[("encoder", 4)].tolist() == [8.0, 8.0], "a run trained on its scored task alone plots its loss"


def test_each_run_records_where_its_time_went(smoke_study):
    """Phase timings (what `litlab.bench study` sums into a study's overhead share) cover each
    run's wall time."""
    from litlab import bench
    _, _, results, _ = smoke_study
    for path in (results / "runs").glob("*/result.json"):
        r = json.loads(path.read_text())
        t = r["timings"]
        assert set(t) == {"setup", "features", "first_step", "train", "eval"} and min(t.values()) >= 0
        assert sum(t.values()) <= r["wall_s"] + 0.1
    phases = bench.study_phases(results)
    assert phases["runs"] == 6 and len(phases["compile_s_per_run"]) == 6
    assert set(phases["phase_s"]) == {"setup", "features", "compile", "train", "eval"}


def test_a_finished_study_is_read_back_not_trained(smoke_study, monkeypatch):
    s, table, results, _ = smoke_study
    from litlab import train
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = study.run(s, "smoke", results=results, progress=False)
    pd.testing.assert_frame_equal(again, table)


def test_a_cut_off_run_resumes_from_its_checkpoint(smoke_study, capsys):
    s, _, results, _ = smoke_study
    config = config_lib.override(s.configs("smoke")[0][2], {"total_steps": 6, "checkpoint_every": 2})
    run_dir = study.run_dir(config, results)
    first = study.run_one(config, run_dir, ("test",))
    # Cut it off after step 4: no result, no final checkpoint.
    (run_dir / "result.json").unlink()
    import shutil
    shutil.rmtree(run_dir / "checkpoints" / "6")
    capsys.readouterr()
    result = study.run_one(config, run_dir, ("test",))
    assert "from checkpoint step 4" in capsys.readouterr().out
    assert result["steps"] == 6 and result["metrics"] == first["metrics"]


def test_a_killed_study_picks_up_where_it_stopped(fresh_cache, tmp_path):
    cmd = [sys.executable, "-m", "litlab.study", "run", "conditioning", "--setting", "smoke", "--results", str(tmp_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    done = lambda: list((tmp_path / "runs").glob("*/result.json")) if (tmp_path / "runs").is_dir() else []
    while not done() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = done()
    assert first, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "conditioning" / "smoke" / "table.csv").exists(), "the study finished before the kill"
    stamps = {p: p.stat().st_mtime_ns for p in first}
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "conditioning: Which conditioning type" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in first} == stamps, "finished runs were trained again"
    table = pd.read_csv(tmp_path / "conditioning" / "smoke" / "table.csv")
    assert len(table.groupby(["arm", "seed"])) == 6


def _synthetic(ref_values, arm_values):
    rows = []
    for arm, values in (("cross", ref_values), ("prefix", arm_values)):
        for seed, v in enumerate(values):
            rows.append({"arm": arm, "seed": seed, "split": "test", "task": "text_vqa", "metric": "vqa_accuracy",
                         "family": "all", "value": v})
    return pd.DataFrame(rows)


def test_intervals_differences_and_findings_come_from_the_table():
    s = tiny(arms={"cross": {}, "prefix": {"decoder.conditioning": "prefix"}})
    table = _synthetic([0.50, 0.52, 0.51], [0.57, 0.60, 0.58])
    summary = study.summarize(table).set_index("arm")
    sd = np.std([0.57, 0.60, 0.58], ddof=1)
    assert summary.loc["prefix", "mean"] == pytest.approx(0.5833333)
    assert summary.loc["prefix", "ci95"] == pytest.approx(sstats.t.ppf(0.975, 2) * sd / np.sqrt(3))
    diff = study.differences(table, "cross").iloc[0]
    d = np.array([0.07, 0.08, 0.07])
    assert diff["mean"] == pytest.approx(d.mean())
    assert diff["ci95"] == pytest.approx(sstats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3))
    f = study.findings(s, table)
    assert f[0] == f"test: prefix beats cross on text_vqa (vqa_accuracy) by {d.mean():.3f} +/- {diff['ci95']:.3f} (95% CI over 3 seeds)."
    noisy = study.findings(s, _synthetic([0.50, 0.60, 0.40], [0.55, 0.45, 0.52]))
    assert noisy == ["test: no arm differs from cross beyond the 95% interval on text_vqa (95% CI over 3 seeds)."]
    text = study.show(s, table)
    assert "0.583 +/- " in text and "prefix beats cross" in text
    # The same difference on every seed has a zero-width interval: named, never counted.
    same = study.findings(s, _synthetic([0.01, 0.02, 0.51], [0.02, 0.03, 0.52]))  # +0.01 up to rounding
    assert same[0] == ("test: prefix differs from cross on text_vqa (vqa_accuracy) by exactly +0.010 on every "
                       "seed, a zero-width interval; not counted as a difference (95% CI over 3 seeds).")
    assert "no arm differs from cross" in same[1]
    spec = plots.study_chart(study.summarize(table)).to_dict()
    assert [layer["mark"]["type"] for layer in spec["spec"]["layer"]] == ["bar", "errorbar"]
    assert {layer["encoding"]["y"]["title"] for layer in spec["spec"]["layer"]} == {"mean over seeds"}  # one axis title


def test_the_best_arm_is_the_one_that_wins_beyond_noise():
    """One difference beyond the noise outweighs mean ranks won inside it (the fast conditioning
    study's case: pooled led on three tasks by noise, prefix won scenes_vqa by 0.10 +/- 0.04)."""
    values = {"cross": {"scenes_vqa": [0.50, 0.52, 0.51], "objects_cls": [0.30, 0.40, 0.35], "text_vqa": [0.60, 0.50, 0.55]},
              "prefix": {"scenes_vqa": [0.60, 0.63, 0.61], "objects_cls": [0.28, 0.41, 0.30], "text_vqa": [0.52, 0.58, 0.50]},
              "pooled": {"scenes_vqa": [0.49, 0.55, 0.50], "objects_cls": [0.36, 0.39, 0.38], "text_vqa": [0.62, 0.49, 0.60]}}
    metric = {"scenes_vqa": "vqa_accuracy", "objects_cls": "exact_match", "text_vqa": "vqa_accuracy"}
    table = pd.DataFrame([{"arm": arm, "seed": seed, "split": "test", "task": task, "metric": metric[task],
                           "family": "all", "value": v}
                          for arm, by_task in values.items() for task, vals in by_task.items()
                          for seed, v in enumerate(vals)])
    ranks = study.summarize(table).pivot_table(index="arm", columns="task", values="mean").rank(ascending=False)
    assert ranks.mean(axis=1).idxmin() == "pooled"  # mean ranks alone would pick pooled
    assert study.best_arm(table) == "prefix"
    # Without prefix's one real win nothing separates, and the best mean rank decides.
    noisy = (table.arm == "prefix") & (table.task == "scenes_vqa")
    noise = table.copy()
    noise.loc[noisy, "value"] = [0.45, 0.60, 0.50]
    assert study.best_arm(noise) == "pooled"


def test_a_new_encoder_file_at_the_same_path_is_a_new_run(tmp_path):
    import shutil
    from litlab import assets
    enc = tmp_path / "enc.npz"
    shutil.copy(assets.asset_path("encoder", "vit_pretrained.npz"), enc)
    c = config_lib.override(quickstart_config(), {"encoder.path": str(enc)})
    before = study.run_dir(c, tmp_path)
    enc.write_bytes(enc.read_bytes()[:-1] + b"x")
    assert study.run_dir(c, tmp_path) != before


def quickstart_config():
    from litlab.configs import quickstart
    return quickstart.get_config()


def test_study_definitions_resolve_and_bad_ones_are_named(capsys):
    for name in study.available():
        arg = "conditioning=prefix" if name == "conditioning_depth" else None
        s = study.load(f"{name}:{arg}" if arg else name)
        for setting in study.SETTINGS:
            configs = s.configs(setting)
            assert len({config_lib.digest(c) for _, _, c in configs}) == len(configs), (name, setting)
            ran = s.settings[setting].arms or tuple(s.arms)
            assert [a for a, seed, _ in configs if seed == s.settings[setting].seeds[0]] == list(ran)
    depth = study.load("conditioning_depth:conditioning=prefix")
    assert {a for a, _, _ in depth.configs("fast")} == {"depth1", "depth2", "depth4"}  # depth 6 only at full
    assert {a for a, _, _ in depth.configs("full")} == {"depth1", "depth2", "depth4", "depth6"}
    fast = study.load("conditioning").configs("fast")
    assert len({(c.data.seed, c.eval.limit, c.data.limit) for _, _, c in fast}) == 1, "every arm sees the same data"
    for family, dense in (("existence", "scenes_caption"), ("reading", "words_ocr")):
        cotrain = {a: c for a, _, c in study.load(f"image_tokens:family={family}").configs("full")}["encoder_cotrain"]
        task = cotrain.eval.tasks[0]
        assert cotrain.mixture == f"{task}+{dense}" and list(cotrain.eval.tasks) == [task] and task.endswith(family)
        assert study.tasks_of(cotrain) == (task,), "scored on the family's task like every other arm"
    arms = {a: c for a, seed, c in study.load("image_tokens").configs("full") if seed == 0}
    for arm, key, value in (("prefix", "conditioning", "prefix"), ("posemb", "image_posemb", "sincos2d")):
        changed, encoder = arms[arm].to_dict(), arms["encoder"].to_dict()
        assert changed["decoder"].pop(key) == value and encoder["decoder"].pop(key) != value
        assert changed == encoder, f"the {arm} arm changes decoder.{key} alone"
    bad = tiny(arms={"a": {"decoder.condtioning": "prefix"}})
    with pytest.raises(ValueError, match=r"arm 'a': unknown config key\(s\): 'decoder.condtioning'"):
        bad.configs("smoke")
    with pytest.raises(ValueError, match=r"arm 'a': \['seed'\] are set by the runner"):
        tiny(arms={"a": {"seed": 3}}).configs("smoke")
    with pytest.raises(ValueError, match=r"arms \['a', 'b'\] resolve to the same config"):
        tiny(arms={"a": {}, "b": {"decoder.conditioning": "cross"}}).configs("smoke")
    with pytest.raises(ValueError, match="reference arm 'z'"):
        study.Study("x", "q", {"a": {}}, "z", tiny().settings)
    trimmed = {**tiny().settings, "fast": study.Setting("quickstart", {}, arms=("b",))}
    with pytest.raises(ValueError, match=r"setting 'fast': its arms \['b'\] must be among \['a'\] "
                                         r"and include the reference 'a'"):
        study.Study("x", "q", {"a": {}}, "a", trimmed)
    some = tiny().configs("smoke", arms=("cross", "pooled"))
    assert [(a, seed) for a, seed, _ in some] == [("cross", 0), ("cross", 1), ("pooled", 0), ("pooled", 1)]
    partial = _synthetic([0.5, 0.6, 0.55], [0.5, 0.6, 0.55]).assign(setting="smoke")
    assert any("arms ['pooled'] of the 'smoke' setting are not in this table yet" in f
               for f in study.findings(tiny(), partial))
    assert study.main(["run", "conditioning", "--setting", "smoke", "--arms", "prefix"]) == 2
    assert "setting 'smoke': the arms to run ['prefix'] must be among ['cross', 'prefix', 'pooled'] and " \
           "include the reference 'cross'" in capsys.readouterr().err
    assert study.main(["run", "nope", "--setting", "smoke"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert study.main(["show", "conditioning", "--results", "/nonexistent"]) == 2
    assert "run the study first" in capsys.readouterr().err
    # A study with an argument is named as `run` takes it, not by its folder name.
    assert study.main(["show", "image_tokens:family=count", "--results", "/nonexistent"]) == 2
    assert "python -m litlab.study run image_tokens:family=count --setting fast" in capsys.readouterr().err
    count = study.load("image_tokens:family=count")  # the loaded study keeps the spec for read's error
    with pytest.raises(FileNotFoundError, match="study run image_tokens:family=count --setting full"):
        study.read(count, "full", results="/nonexistent")


def test_arm_comparison_shows_every_arm_on_the_same_example(smoke_study):
    from litlab import widgets
    s, _, results, _ = smoke_study
    preds = study.predictions(s, "smoke", results=results)
    assert set(preds) == set(s.arms)
    imgs = study.images(s, "smoke")
    assert {r["image_id"] for r in preds["cross"]} <= set(imgs)
    w = widgets.arm_comparison(preds, imgs)
    html = w.children[1].children[1].value
    assert all(f"<b>{arm}</b>" in html for arm in s.arms) and "references" in html
    w.children[0].children[1].value = True  # only disagreements: still renders
    assert "rows" in w.children[1].children[1].value
    broken = dict(preds, prefix=preds["prefix"][1:])
    with pytest.raises(ValueError, match="arm 'prefix' was evaluated on other examples than 'cross'"):
        widgets.arm_comparison(broken)


@pytest.mark.slow
def test_image_tokens_full_max_len_fits_every_family_whole():
    """The full setting's data.max_len (28) was sized on one family's longest example; a template
    or vocabulary change that outgrows it must fail here, not truncate a study's answers. Checked
    on 1,500 training images per family and on the evaluated images of the scored splits."""
    import warnings
    from litlab import runs
    from litlab.configs.studies import image_tokens
    from litlab.data.tokenizer import Tokenizer
    for family in image_tokens.FAMILIES:
        for arm, seed, config in study.load(f"image_tokens:family={family}").configs("full"):
            if seed or arm not in ("encoder", "encoder_cotrain"):  # the others read the same data
                continue
            for split, limit in (("train", 1500), ("test", config.eval.limit), ("compositional", config.eval.limit)):
                with warnings.catch_warnings():  # the pipeline warns of a truncated or dropped example
                    warnings.filterwarnings("error", message=r".*(truncated|dropped)")
                    data = runs.load_data(config, Tokenizer(), split, limit=limit)
                for task in data.tasks:
                    assert task.stats["truncated"] == 0 and task.stats["dropped_no_target"] == 0, (family, arm, split)
                    assert int(task.loss_mask.sum(1).min()) >= 2, (family, arm, split)  # answer and EOS, whole
