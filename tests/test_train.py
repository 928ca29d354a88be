import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from litlab import checkpoints, config as config_lib, runs, train
from litlab.configs import quickstart
from litlab.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def smoke(**overrides):
    return config_lib.override(quickstart.get_config("smoke"),
                               {"total_steps": STEPS, "checkpoint_every": 4, **overrides})


def _params(workdir):
    """Final params and step straight from the latest checkpoint."""
    run = runs.load(workdir)
    return run.params, run.step


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ref")
    run = train.train(smoke(), workdir, progress=False)
    return run, workdir


def test_smoke_run_logs_checkpoints_and_freezes_the_encoder(reference_run):
    run, workdir = reference_run
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert {"loss/objects_cls", "accuracy/words_ocr"} <= set().union(*rows)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [8, 12]
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    # The frozen encoder is bit-identical to its initialization; the decoder moved.
    init = runs.init_params(run.model, run.config)
    for a, b in zip(jax.tree.leaves(init["img"]), jax.tree.leaves(run.params["img"])):
        np.testing.assert_array_equal(a, b)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(init["decoder"]),
                                                          jax.tree.leaves(run.params["decoder"]))]
    assert all(moved)


def test_cached_features_give_the_encoder_in_the_loop_curve(reference_run, tmp_path):
    cached, _ = reference_run
    live = train.train(smoke(feature_cache="none"), tmp_path, progress=False)
    a = [r["loss"] for r in cached.history]
    b = [r["loss"] for r in live.history]
    np.testing.assert_allclose(a, b, rtol=2e-3)  # the cache stores bfloat16 features


def test_sigkill_and_rerun_reaches_bit_identical_params(reference_run, tmp_path):
    ref_params, _ = _params(reference_run[1])
    cmd = [sys.executable, "-m", "litlab.train", "--config", "litlab/configs/quickstart.py:smoke",
           "--workdir", str(tmp_path), f"--config.total_steps={STEPS}", "--config.checkpoint_every=4"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "checkpoints" / "4"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "train_summary.json").exists(), "the run finished before it could be killed"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout
    params, step = _params(tmp_path)
    assert step == STEPS
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(reference_run, tmp_path):
    import shutil
    shutil.copytree(reference_run[1] / "checkpoints", tmp_path / "checkpoints")
    shutil.copy(reference_run[1] / "config.json", tmp_path)
    for f in (tmp_path / "checkpoints" / "12").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(b"\0" * 16)
    with pytest.warns(UserWarning, match=r"checkpoints/12 could not be restored.*falling back"):
        _, step = _params(tmp_path)
    assert step == 8


def test_second_run_in_the_same_workdir_refuses(tmp_path):
    with checkpoints.workdir_lock(tmp_path):
        with pytest.raises(checkpoints.WorkdirBusy, match=f"workdir {tmp_path} is in use by another litlab run"):
            train.train(smoke(), tmp_path, progress=False)


def test_nan_loss_stops_naming_step_and_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss is nan at step \d+; stopping. Last good checkpoint"):
        train.train(smoke(**{"optimizer.lr": float("nan")}), tmp_path, progress=False)


def test_unknown_config_key_lists_close_valid_keys():
    c = smoke()
    c.unlock()
    c.optimizer.lerning_rate = 1.0
    with pytest.raises(ValueError, match=r"unknown config key\(s\): 'optimizer.lerning_rate' \(did you mean"):
        config_lib.check(c)
    # The override API (tests, bench, study runner) and the CLI give the same error.
    with pytest.raises(ValueError, match=r"unknown config key\(s\): 'optimizer.lerning_rate' \(did you mean"):
        config_lib.override(smoke(), {"optimizer.lerning_rate": 1.0})
    _, cli = config_lib.split_cli_overrides(["--config.optimizer.lerning_rate=1"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\): 'optimizer.lerning_rate' \(did you mean"):
        config_lib.override(smoke(), cli, from_strings=True)


def test_overrides_are_typed_copies():
    base = smoke()
    c = config_lib.override(base, {"decoder.conditioning": "prefix", "optimizer.lr": 2})
    assert base.decoder.conditioning == "cross" and c.decoder.conditioning == "prefix"
    assert isinstance(c.optimizer.lr, float)
    cli = config_lib.override(base, {"total_steps": "7", "decoder.conditioning": "pooled",
                                     "inputs.image": "false", "encoder.model.width": "16"}, from_strings=True)
    assert (cli.total_steps, cli.decoder.conditioning, cli.inputs.image, cli.encoder.model.width) == (7, "pooled", False, 16)
    with pytest.raises(ValueError, match="'total_steps'"):
        config_lib.override(base, {"total_steps": "many"})


def test_the_seed_does_not_change_the_test_set(tok):
    """Seeds are the model's randomness; the benchmark's content is data.seed's alone."""
    a = runs.load_data(smoke(seed=0), tok, "test", limit=4)
    b = runs.load_data(smoke(seed=1), tok, "test", limit=4)
    assert a.images.tobytes() == b.images.tobytes() and a.image_keys == b.image_keys
    for ta, tb in zip(a.tasks, b.tasks):
        assert ta.tokens.tobytes() == tb.tokens.tobytes() and ta.references == tb.references
    c = runs.load_data(smoke(**{"data.seed": 1}), tok, "test", limit=4)
    assert a.images.tobytes() != c.images.tobytes()


def test_reused_workdir_with_another_config_refuses(reference_run, tmp_path):
    import shutil
    workdir = tmp_path / "w"
    shutil.copytree(reference_run[1], workdir)
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(train.WorkdirMismatch, match=r"decoder.conditioning: 'cross' -> 'pooled'.*--overwrite"):
        train.train(smoke(**{"decoder.conditioning": "pooled"}), workdir, progress=False)
    with pytest.raises(train.WorkdirMismatch, match=r"decoder.depth: 1 -> 2"):
        train.train(smoke(**{"decoder.depth": 2}), workdir, progress=False)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert json.loads((workdir / "config.json").read_text())["decoder"]["conditioning"] == "cross"
    # Cadence keys may differ: the finished run is picked up, not retrained.
    again = train.train(smoke(log_every=5, keep_checkpoints=3), workdir, progress=False)
    assert again.step == STEPS and len(again.history) == STEPS
    # --overwrite moves the old run aside; nothing is deleted.
    train.train(smoke(**{"decoder.conditioning": "pooled", "total_steps": 2}), workdir, progress=False, overwrite=True)
    aside = list(tmp_path.glob("w.replaced-*"))
    assert len(aside) == 1 and sorted(p.name for p in (aside[0] / "checkpoints").iterdir()) == before
    assert json.loads((workdir / "config.json").read_text())["decoder"]["conditioning"] == "pooled"


def test_a_rejected_config_leaves_no_config_behind(tmp_path):
    with pytest.raises(ValueError, match="sharding"):
        train.train(smoke(sharding_strategy="foo"), tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()
    for key, value in (("total_steps", -5), ("log_every", 0), ("checkpoint_every", 0), ("eval.limit", 0)):
        with pytest.raises(ValueError, match=f"config key '{key}' must be a positive integer"):
            train.train(smoke(**{key: value}), tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown decoding method"):
        train.train(smoke(**{"eval.decode": "gredy"}), tmp_path, progress=False)
    assert not (tmp_path / "config.json").exists()


def test_determinism_same_config_same_losses(reference_run, tmp_path):
    again = train.train(smoke(), tmp_path, progress=False)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in reference_run[0].history]


def test_runs_that_differ_only_in_seed_or_prompts_share_one_traced_step(reference_run, tmp_path, monkeypatch):
    """A study's seeds and prompt arms reuse the reference run's jitted step (no retrace), with
    the same result as a freshly traced step; another learning rate is another program."""
    built = []
    make = train.make_train_step
    monkeypatch.setattr(train, "make_train_step", lambda *a, **k: built.append(1) or make(*a, **k))
    shared = train.train(smoke(seed=5, prompt_style="token"), tmp_path / "shared", progress=False)
    assert built == []
    monkeypatch.setattr(train, "_STEPS", type(train._STEPS)())
    fresh = train.train(smoke(seed=5, prompt_style="token"), tmp_path / "fresh", progress=False)
    assert built == [1]
    assert [r["loss"] for r in shared.history] == [r["loss"] for r in fresh.history]
    train.train(smoke(**{"optimizer.lr": 1e-4}), tmp_path / "lr", progress=False)
    assert built == [1, 1]


def test_corrupt_latest_checkpoint_of_a_finished_run_is_set_aside_and_training_goes_on(reference_run, tmp_path):
    import shutil
    workdir = tmp_path / "w"
    shutil.copytree(reference_run[1], workdir)
    for f in (workdir / "checkpoints" / "12").rglob("*"):
        if f.is_file() and f.stat().st_size > 64:
            f.write_bytes(b"\0" * 16)
    with pytest.warns(UserWarning, match=r"checkpoints/12 could not be restored.*It was moved to .*checkpoints.corrupt/12-"):
        run = train.train(smoke(), workdir, progress=False)
    assert run.step == STEPS and [r["step"] for r in run.history] == list(range(1, STEPS + 1))
    assert len(list((workdir / "checkpoints.corrupt").iterdir())) == 1  # kept, never deleted
    params, step = _params(workdir)
    assert step == STEPS
    for a, b in zip(jax.tree.leaves(reference_run[0].params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    again = train.train(smoke(), workdir, progress=False)  # and every later rerun works too
    assert again.step == STEPS


def test_metrics_log_torn_last_line_is_dropped_corrupt_middle_line_is_named(reference_run, tmp_path):
    import shutil
    workdir = tmp_path / "w"
    shutil.copytree(reference_run[1], workdir)
    log = workdir / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines) + "\n" + lines[-1][:17])  # killed while writing
    with pytest.warns(UserWarning, match=r"metrics.jsonl:13: dropped a torn last line"):
        run = train.train(smoke(), workdir, progress=False)
    assert len(run.history) == STEPS
    log.write_text("\n".join(lines[:3] + ["{garbage"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:4: not valid JSON"):
        train.train(smoke(), workdir, progress=False)


class _DeleteLog:
    """An evaluator (called every eval_every steps) that deletes the metrics log mid-run."""
    name = "delete_log"

    def __call__(self, run, tag=None):
        if tag:  # the periodic call, not the one at the end
            (run.workdir / "metrics.jsonl").unlink()
        return {}


def test_metrics_log_deleted_during_a_run_is_started_again(tmp_path):
    train.train(smoke(eval_every=6, log_every=1), tmp_path, evaluators=[_DeleteLog()], progress=False)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Deleted after step 5 was logged (a line is written one step late); logged again from step 6.
    assert steps == list(range(6, STEPS + 1))


def test_unwritable_workdir_and_eval_folder_fail_before_any_work(reference_run, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(checkpoints.WorkdirNotWritable, match=r"workdir .*a_file/run is not writable"):
        train.train(smoke(), blocker / "run", progress=False)
    # Evaluation checks its output folder before it decodes anything.
    from litlab import decode, evaluate
    run = runs.load(reference_run[1])
    run.workdir = blocker
    monkeypatch.setattr(decode, "generate", lambda *a, **k: pytest.fail("decoded before checking the output"))
    with pytest.raises(checkpoints.WorkdirNotWritable, match=r"evaluation folder .*a_file/eval/test is not writable"):
        evaluate.Evaluator("test")(run)


class _FixedLogits:
    """Stands in for the model: loss_and_metrics only calls apply()."""

    def __init__(self, logits):
        self.logits = logits

    def apply(self, *args, **kwargs):
        return self.logits


def test_loss_and_accuracy_match_one_hot_cross_entropy_and_argmax():
    rng = np.random.default_rng(0)
    B, L, V = 6, 9, 17
    logits = jax.numpy.asarray(rng.normal(size=(B, L - 1, V)).astype(np.float32))
    tokens = rng.integers(0, V, (B, L)).astype(np.int32)
    tokens[:, 1:4] = np.asarray(logits.argmax(-1))[:, :3]  # some tokens right, most wrong
    mask = (rng.random((B, L)) < 0.7).astype(np.float32)
    task_id = np.array([0, 1, 1, 2, 0, 2], np.int32)
    batch = {"tokens": tokens, "loss_mask": mask, "prefix_len": np.zeros(B, np.int32), "task_id": task_id,
             "image_tokens": np.zeros((B, 4, 8), np.float32)}
    labels, m = tokens[:, 1:], mask[:, 1:]
    logp = np.asarray(jax.nn.log_softmax(logits))
    for smoothing in (0.0, 0.1):
        target = np.eye(V)[labels] * (1 - smoothing) + smoothing / V
        want_tok = -(target * logp).sum(-1)
        loss, met = train.loss_and_metrics(_FixedLogits(logits), None, batch, None, num_tasks=3,
                                           label_smoothing=smoothing, train=True)
        np.testing.assert_allclose(loss, (want_tok * m).sum() / m.sum(), rtol=1e-5)
        right = (np.asarray(logits).argmax(-1) == labels) * m
        np.testing.assert_allclose(met["accuracy"], right.sum() / m.sum(), rtol=1e-6)
        for t in range(3):
            rows = task_id == t
            np.testing.assert_allclose(met["task_accuracy"][t], right[rows].sum() / m[rows].sum(), rtol=1e-6)
            np.testing.assert_allclose(met["task_loss"][t], (want_tok * m)[rows].sum() / m[rows].sum(), rtol=1e-5)
    assert 0 < float(met["accuracy"]) < 1
