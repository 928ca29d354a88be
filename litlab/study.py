"""The study runner: arms x seeds of training runs, one tidy table, confidence intervals, findings.

    python -m litlab.study run NAME [--setting smoke|fast|full] [--results DIR] [--arms A,B]
    python -m litlab.study show NAME [--setting ...] [--results DIR]
    python -m litlab.study list

A study (litlab/configs/studies/NAME.py) is a base config, named arms (dicts of dotted
overrides) and seeds. Each run lives in RESULTS/runs/<hash of its resolved config>, so:
- a finished run is never trained again, by this study or any other that asks for the same
  config (its metrics are read back from result.json);
- a run that was cut off resumes from its last checkpoint, and an interrupted study picks up
  where it stopped, because rerunning it walks the same folders;
- every run uses the disk feature cache, so all arms and seeds that share an encoder and an
  image set (train, test, compositional) encode each image once for the whole study.
Each run is scored on `test` and on `compositional` (held-out color-shape pairs and words).
The table has one row per (arm, seed, split, task, metric, family); summaries give per-arm means
with 95% Student-t intervals over seeds, and paired differences against the reference arm.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tqdm.auto import tqdm

from litlab import config as config_lib

STUDY_DIR = Path(__file__).resolve().parent / "configs" / "studies"
SETTINGS = ("smoke", "fast", "full")
DEFAULT_RESULTS = "workdirs/studies"


@dataclasses.dataclass(frozen=True)
class Setting:
    """How big a study's runs are: a base config, overrides on it, the seeds to run, and which
    arms run at this size (None: all; a study trims the arms it cannot afford at `fast`)."""
    base: str
    overrides: dict
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    question: str  # the research question, as the notebook and `show` state it
    arms: dict[str, dict]  # arm name -> dotted config overrides
    reference: str  # the arm others are compared against (paired by seed)
    settings: dict[str, Setting]
    splits: tuple[str, ...] = ("test", "compositional")
    spec: str = ""  # what `load` was given (image_tokens:family=count), so errors name what `run` takes

    def __post_init__(self):
        if not self.arms:
            raise ValueError(f"study {self.name!r} has no arms.")
        if self.reference not in self.arms:
            raise ValueError(f"study {self.name!r}: reference arm {self.reference!r} is not one of {list(self.arms)}.")
        missing = [s for s in SETTINGS if s not in self.settings]
        if missing:
            raise ValueError(f"study {self.name!r} lacks the setting(s) {missing}.")
        for name, s in self.settings.items():
            if s.arms is not None:
                self._check_arms(s.arms, tuple(self.arms), f"setting {name!r}: its arms")

    def _check_arms(self, arms, allowed, where: str) -> None:
        """A subset of arms (a setting's, or a caller's) must lie in `allowed` and hold the reference,
        which every finding is paired against."""
        if set(arms) - set(allowed) or self.reference not in arms:
            raise ValueError(f"study {self.name!r}, {where} {list(arms)} must be among {list(allowed)} "
                             f"and include the reference {self.reference!r}.")

    def arms_at(self, setting: str) -> tuple[str, ...]:
        """The arms that `setting` runs: its own list, or all of the study's."""
        return self.settings[setting].arms or tuple(self.arms)

    def configs(self, setting: str, arms: tuple[str, ...] | None = None) -> list[tuple[str, int, object]]:
        """(arm, seed, resolved config) for every run of the study at `setting`, or of only the
        given arms of it (the reference among them), to run a long setting an arm at a time."""
        if setting not in self.settings:
            raise ValueError(f"unknown setting {setting!r}; choose one of {list(self.settings)}.")
        s = self.settings[setting]
        ran = self.arms_at(setting)
        if arms is not None:
            self._check_arms(arms, ran, f"setting {setting!r}: the arms to run")
        base = config_lib.override(config_lib.load(s.base), s.overrides)
        out = []
        for arm, overrides in self.arms.items():
            if arm not in (arms or ran):
                continue
            owned = sorted(set(overrides) & {"seed", "feature_cache"})
            if owned:
                raise ValueError(f"study {self.name!r}, arm {arm!r}: {owned} are set by the runner (seeds come "
                                 "from the setting, and every run uses the shared disk feature cache).")
            try:
                arm_config = config_lib.override(base, overrides)
            except ValueError as e:
                raise ValueError(f"study {self.name!r}, arm {arm!r}: {e}") from None
            for seed in s.seeds:
                out.append((arm, seed, config_lib.override(arm_config, {"seed": seed, "feature_cache": "disk"})))
        same: dict[str, list[str]] = {}
        for arm, seed, config in out:
            if seed == s.seeds[0]:
                same.setdefault(config_lib.digest(config), []).append(arm)
        twins = [arms for arms in same.values() if len(arms) > 1]
        if twins:
            raise ValueError(f"study {self.name!r}: arms {twins[0]} resolve to the same config at setting "
                             f"{setting!r}, so they would be one run counted twice; make their overrides differ.")
        return out


def available() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(spec: str) -> Study:
    """A study by name (`conditioning`, `conditioning_depth:conditioning=prefix`) or file.py[:arg]."""
    name, _, arg = spec.partition(":")
    path = Path(name) if name.endswith(".py") else STUDY_DIR / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no study {name!r}; the studies are {available()} (litlab/configs/studies/).")
    module_spec = importlib.util.spec_from_file_location(f"litlab_study_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return dataclasses.replace(module.get_study(arg or None), spec=spec)


def run_dir(config, root: Path) -> Path:
    """RESULTS/runs/<hash of the resolved config and of the encoder file's bytes>: a new file at
    the same encoder path is another experiment, not a finished one."""
    from litlab import runs
    extra = runs.file_digest(runs.resolve_path(config.encoder.path)) if config.encoder.path else ""
    return root / "runs" / config_lib.digest(config, extra)


def _result_path(run_dir: Path) -> Path:
    return run_dir / "result.json"


def run_one(config, run_dir: Path, splits: tuple[str, ...]) -> dict:
    """A finished run's result, read back; otherwise train (or resume) it, evaluate, record."""
    path = _result_path(run_dir)
    if path.is_file():
        return json.loads(path.read_text())
    from litlab import checkpoints, evaluate, train
    t0 = time.perf_counter()
    run = train.train(config, run_dir, evaluators=[evaluate.Evaluator(s, progress=False) for s in splits],
                      progress=False)
    result = {"digest": Path(run_dir).name, "steps": run.step, "wall_s": round(time.perf_counter() - t0, 1),
              "steps_per_s": run.steps_per_s, "timings": run.timings, "trainable_params": run.trainable_params,
              "metrics": run.metrics}
    # Written last and atomically: its presence means the run is complete.
    checkpoints.write_atomic(path, json.dumps(result, indent=2))
    return result


def results_root(results: str | Path | None) -> Path:
    return Path(results or os.environ.get("LITLAB_RESULTS", DEFAULT_RESULTS))


def run(study: Study | str, setting: str = "fast", *, results: str | Path | None = None,
        progress: bool = True, arms: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Runs (or reads back) every arm x seed, or those of `arms` only; returns the tidy table and
    writes it, its summary, the paired differences and the chart into RESULTS/<study>/<setting>/.
    These then hold the arms of this call only, and the findings name the arms not yet run; a
    later call with more arms (or all) reads the finished runs back and writes them all."""
    study = load(study) if isinstance(study, str) else study
    root = results_root(results)
    plan = study.configs(setting, arms)
    records = []
    bar = tqdm(plan, desc=f"study {study.name} ({setting})", unit="run", disable=not progress)
    from litlab import checkpoints
    checkpoints.check_writable(root / "runs", "study results folder")
    for arm, seed, config in bar:
        bar.set_postfix(arm=arm, seed=seed)
        records.append((arm, seed, run_one(config, run_dir(config, root), study.splits)))
    table = tidy(study, setting, records)
    write(study, setting, table, root)
    return table


def tidy(study: Study, setting: str, records: list[tuple[str, int, dict]]) -> pd.DataFrame:
    rows = []
    for arm, seed, result in records:
        for split, by_task in result["metrics"].items():
            for task, scores in by_task.items():
                for key, value in scores.items():
                    metric, _, family = key.partition("/")
                    rows.append({"study": study.name, "setting": setting, "arm": arm, "seed": seed,
                                 "split": split, "task": task, "metric": metric, "family": family or "all",
                                 "value": float(value), "steps": result["steps"], "wall_s": result["wall_s"],
                                 "params": result["trainable_params"], "run": result["digest"]})
    return pd.DataFrame(rows)


KEYS = ["split", "task", "metric", "family"]


def _ci(values: pd.Series) -> pd.Series:
    n = len(values)
    mean = values.mean()
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return pd.Series({"mean": mean, "ci95": half, "n": n})


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per arm: the mean over seeds and the half-width of its 95% Student-t interval."""
    out = table.groupby(["arm"] + KEYS, sort=False)["value"].apply(_ci).unstack().reset_index()
    return out.astype({"n": int})


def differences(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each arm minus the reference arm, paired by seed, with the 95% interval of the mean difference."""
    ref = table[table.arm == reference][["seed"] + KEYS + ["value"]].rename(columns={"value": "ref"})
    other = table[table.arm != reference].merge(ref, on=["seed"] + KEYS)
    other = other.assign(diff=other.value - other.ref)
    if other.empty:
        return pd.DataFrame(columns=["arm"] + KEYS + ["mean", "ci95", "n"])
    out = other.groupby(["arm"] + KEYS, sort=False)["diff"].apply(_ci).unstack().reset_index()
    return out.astype({"n": int})


def primary(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's primary metric (its first), over all question families."""
    from litlab.data import tasks
    main = {t: tasks.get_task(t).metrics[0] for t in table.task.unique()}
    return table[(table.family == "all") & (table.metric == table.task.map(main))]


def beyond_noise(diff: pd.DataFrame) -> pd.Series:
    """Rows of `differences` whose 95% interval excludes zero. A zero-width interval (the same
    difference on every seed, e.g. one test example of 100 on each) is not evidence of an effect:
    the seeds then say nothing about its noise, so it never counts."""
    return (diff.n > 1) & ~_zero_width(diff) & ((diff["mean"] - diff.ci95 > 0) | (diff["mean"] + diff.ci95 < 0))


# Differences this small are zero up to float rounding: 0.02 - 0.01 on one seed and 0.03 - 0.02
# on another differ in the 17th digit.
_ROUNDING = 1e-9


def _zero_width(diff: pd.DataFrame) -> pd.Series:
    return diff.ci95.abs() < _ROUNDING


def findings(study: Study, table: pd.DataFrame) -> list[str]:
    """Sentences computed from the table: where an arm beats or trails the reference beyond the
    95% interval of the paired difference, and where no arm separates from it."""
    diff = differences(primary(table), study.reference)
    n_seeds = table.seed.nunique()
    out = []
    for split in [s for s in study.splits if s in set(diff.split)]:
        d = diff[diff.split == split]
        level = d[beyond_noise(d)]
        for _, r in level.sort_values("mean", ascending=False).iterrows():
            verb = "beats" if r["mean"] > 0 else "trails"
            out.append(f"{split}: {r.arm} {verb} {study.reference} on {r.task} ({r.metric}) by "
                       f"{abs(r['mean']):.3f} +/- {r.ci95:.3f}")
        for _, r in d[(d.n > 1) & _zero_width(d) & (d["mean"].abs() > _ROUNDING)].iterrows():
            out.append(f"{split}: {r.arm} differs from {study.reference} on {r.task} ({r.metric}) by exactly "
                       f"{r['mean']:+.3f} on every seed, a zero-width interval; not counted as a difference")
        quiet = sorted(set(d.task) - set(level.task))
        if quiet:
            out.append(f"{split}: no arm differs from {study.reference} beyond the 95% interval on "
                       f"{', '.join(quiet)}")
    if n_seeds < 2:
        out.append("only one seed: no interval can be computed; run more seeds before reading any difference.")
    setting = table.setting.iloc[0] if "setting" in table and len(table) else None
    if setting in study.settings:
        missing = [a for a in study.arms_at(setting) if a not in set(table.arm)]
        if missing:
            out.append(f"arms {missing} of the {setting!r} setting are not in this table yet; run the study "
                       "without --arms to add them.")
    return [f"{s} (95% CI over {n_seeds} seeds)." if not s.endswith(".") else s for s in out]


def study_dir(study: Study, setting: str, results: str | Path | None = None) -> Path:
    return results_root(results) / study.name / setting


def write(study: Study, setting: str, table: pd.DataFrame, root: Path) -> Path:
    """table.csv, summary.csv, differences.csv, findings.txt and chart.png of one study setting."""
    from litlab import plots
    out = root / study.name / setting
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.csv", index=False)
    summarize(table).to_csv(out / "summary.csv", index=False)
    differences(table, study.reference).to_csv(out / "differences.csv", index=False)
    (out / "findings.txt").write_text("\n".join(findings(study, table)) + "\n")
    plots.study_chart(summarize(primary(table)), title=f"{study.name} ({setting}): {study.question}").save(
        str(out / "chart.png"), scale_factor=1.5)
    return out


def read(study: Study | str, setting: str = "fast", *, results: str | Path | None = None) -> pd.DataFrame:
    """The table a finished `run` wrote."""
    study = load(study) if isinstance(study, str) else study
    path = study_dir(study, setting, results) / "table.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the study first: python -m litlab.study run "
                                f"{study.spec or study.name} "
                                f"--setting {setting}.")
    return pd.read_csv(path, keep_default_na=False)


def _cells(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.assign(cell=[f"{m:.3f} +/- {c:.3f}" for m, c in zip(summary["mean"], summary.ci95)])


def wide(table: pd.DataFrame) -> pd.DataFrame:
    """Arms x (split, task): "mean +/- 95% CI" of each task's primary metric."""
    return _cells(summarize(primary(table))).pivot_table(
        index="arm", columns=["split", "task"], values="cell", aggfunc="first", sort=False)


def family_scores(table: pd.DataFrame, task: str, split: str = "test") -> pd.DataFrame:
    """Arms x question families of one VQA task: "mean +/- 95% CI" of its primary metric."""
    from litlab.data import tasks
    t = table[(table.task == task) & (table.split == split) & (table.metric == tasks.get_task(task).metrics[0])]
    if t.empty:
        raise ValueError(f"no {task!r} rows on split {split!r}; tasks in this table: {sorted(set(table.task))}.")
    return _cells(summarize(t)).pivot_table(index="arm", columns="family", values="cell", aggfunc="first", sort=False)


def best_arm(table: pd.DataFrame, split: str = "test") -> str:
    """The arm with the most wins beyond noise: over every pair of arms and every task (primary
    metrics, paired by seed), +1 where it beats the other arm beyond the 95% interval, -1 where
    it trails. Ties, including "no arm separates", go to the best mean rank over tasks (ranks,
    so a CIDEr-D near 2 does not outweigh accuracies near 0.5). Mean ranks alone would let
    differences inside the noise outvote one that is real."""
    main = primary(table[table.split == split])
    arms = [str(a) for a in dict.fromkeys(main.arm)]
    wins = dict.fromkeys(arms, 0)
    for ref in arms:
        d = differences(main, ref)
        for _, r in d[beyond_noise(d)].iterrows():
            wins[r.arm] += 1 if r["mean"] > 0 else -1
    rank = summarize(main).pivot_table(index="arm", columns="task", values="mean").rank(ascending=False).mean(axis=1)
    return max(arms, key=lambda a: (wins[a], -rank[a]))


def show(study: Study, table: pd.DataFrame) -> str:
    """The summary table of primary metrics and the findings, as text."""
    return (f"{study.name}: {study.question}\n\n{wide(table).to_string()}\n\n"
            + "\n".join(f"- {f}" for f in findings(study, table)))


def findings_markdown(study: Study, table: pd.DataFrame) -> str:
    """The findings as a Markdown list, for a notebook's closing cell."""
    return f"**{study.question}**\n\n" + "\n".join(f"- {f}" for f in findings(study, table))


def predictions(study: Study, setting: str, *, split: str = "test", seed: int | None = None,
                results: str | Path | None = None) -> dict[str, list[dict]]:
    """{arm: decoded rows of `split`} for one seed (the setting's first by default), for browsing
    what the arms actually answer on the same examples."""
    plan = study.configs(setting)
    seed = plan[0][1] if seed is None else seed
    out = {}
    for arm, s, config in plan:
        path = run_dir(config, results_root(results)) / "eval" / split / "predictions.jsonl"
        if s == seed and path.is_file():
            out[arm] = [json.loads(line) for line in path.read_text().splitlines()]
    if not out:
        raise FileNotFoundError(f"no {split!r} predictions of seed {seed} under {results_root(results)}; run the study first.")
    return out


def curves(study: Study, setting: str, *, results: str | Path | None = None) -> pd.DataFrame:
    """Training loss against step, one row per (arm, seed, step), from each run's metrics.jsonl:
    whether an arm left the answer prior, and when, which a final score alone does not show.
    A run scored on one task plots that task's loss, so an arm that also trains on another task
    (a co-training arm) is compared on the same loss as the others."""
    from litlab.data import mixtures
    rows = []
    for arm, seed, config in study.configs(setting):
        path = run_dir(config, results_root(results)) / "metrics.jsonl"
        scored, trained = tasks_of(config), mixtures.get_mixture(config.mixture).tasks
        # A logged step whose batch held none of the scored task has no loss for it: skipped.
        key = f"loss/{scored[0]}" if len(scored) == 1 and set(trained) != set(scored) else "loss"
        if path.is_file():
            rows += [{"arm": arm, "seed": seed, "step": m["step"], "loss": m[key]}
                     for m in map(json.loads, path.read_text().splitlines()) if key in m]
    if not rows:
        raise FileNotFoundError(f"no training logs of study {study.name!r} at {setting!r} under "
                                f"{results_root(results)}; run the study first.")
    return pd.DataFrame(rows)


def images(study: Study, setting: str, split: str = "test") -> dict[str, np.ndarray]:
    """{image id: uint8 pixels} of the evaluated images of `split` (the same for every arm)."""
    from litlab.data.tokenizer import Tokenizer
    from litlab import runs
    config = study.configs(setting)[0][2]
    data = runs.load_data(config, Tokenizer(), split, task_names=list(tasks_of(config)), limit=config.eval.limit)
    return dict(zip(data.image_keys, data.images))


def tasks_of(config) -> tuple[str, ...]:
    from litlab.data import mixtures
    return tuple(config.eval.tasks) or mixtures.get_mixture(config.mixture).tasks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litlab.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("run", "show"):
        p = sub.add_parser(name)
        p.add_argument("study", help=f"one of {available()}, optionally NAME:ARG")
        p.add_argument("--setting", default="fast", choices=SETTINGS)
        p.add_argument("--results", default=None, help=f"results folder (default ${{LITLAB_RESULTS}} or {DEFAULT_RESULTS})")
    sub.choices["run"].add_argument("--arms", default=None,
                                    type=lambda v: tuple(a.strip() for a in v.split(",") if a.strip()),
                                    help="comma-separated arms to run now, the reference among them (default: all)")
    sub.add_parser("list")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for name in available():
                print(f"{name}: {load(name).question}")
            return 0
        study = load(args.study)
        table = run(study, args.setting, results=args.results, arms=args.arms) if args.command == "run" else \
            read(study, args.setting, results=args.results)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(show(study, table))
    print(f"\ntables and chart: {study_dir(study, args.setting, args.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
