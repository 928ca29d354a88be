"""Evaluators: decode every task of a split, score it, write metrics and predictions.

    python -m litlab.evaluate --workdir DIR [--split test|compositional|val] [--decode greedy|beam:4|...]

Writes DIR/eval/<split>/metrics.json as {task: {metric: value}}, predictions.jsonl beside it
(task, image id, prompt, question family, prediction, references) and info.json (the step scored,
decoding, images per task). A --decode or --limit other than the config's writes
eval/<split>-<decode>-limit<N>/ instead; training's evaluations every `eval_every` steps write
eval/step_<N>/<split>/. VQA tasks also get each
metric per question family ("vqa_accuracy/count"), so a study can say where an arm wins. Each
eval image is encoded once, even when several tasks ask about it (and, with a disk feature
cache, once for all runs); classification is scored both by generation and, CapPa-style, by
ranking every class name by its likelihood.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from litlab import checkpoints, decode, metrics, runs
from litlab.data import mixtures, pipeline, tasks


class Evaluator:
    """Decodes and scores one split of a run, and writes eval/<name>/ in its workdir.

    Training takes these from its caller (`train.train(..., evaluators=...)`), so the trainer
    never imports evaluation code and a study can ask for any splits it needs.
    """

    def __init__(self, split: str, *, method: str | None = None, limit: int | None = None,
                 task_names: list[str] | None = None, progress: bool = True, name: str | None = None):
        if split not in tasks.EVAL_SPLITS:
            raise ValueError(f"unknown eval split {split!r}; choose one of {tasks.EVAL_SPLITS}.")
        if method is not None:
            decode.parse_method(method)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"eval limit must be a positive number of images per task, got {limit!r}.")
        self.split, self.method, self.limit, self.task_names = split, method, limit, task_names
        self.progress, self.name = progress, name or split

    def __call__(self, run: runs.Run, *, tag: str | None = None) -> dict:
        c = run.config
        # Before decoding anything: results that cannot be written would be thrown away.
        checkpoints.check_writable(Path(run.workdir) / "eval" / (tag or self.name), "evaluation folder")
        method, limit = self.method or c.eval.decode, self.limit or c.eval.limit
        results, rows = evaluate(run, split=self.split, method=method, limit=limit,
                                 task_names=self.task_names or list(c.eval.tasks) or None,
                                 progress=self.progress)
        write(run.workdir, tag or self.name, results, rows,
              {"step": run.step, "split": self.split, "decode": method, "limit": limit})
        return results


def for_config(config, splits: tuple[str, ...] | None = None, *, progress: bool = True) -> list[Evaluator]:
    """The evaluators a config asks for: its `eval.split`, or each of `splits`."""
    return [Evaluator(s, progress=progress) for s in (splits or (config.eval.split,))]


def score_predictions(names: tuple[str, ...], preds: list[str], refs: list[list[str]],
                      families: list[str] | None = None) -> dict[str, float]:
    """The task's metrics over aligned predictions and references; with more than one question
    family, each metric on each family too, as "metric/family"."""
    out = metrics.compute(names, preds, refs)
    if families and len(set(families)) > 1:
        for family, scores in metrics.compute_by_group(names, preds, refs, families).items():
            out.update({f"{m}/{family}": v for m, v in scores.items()})
    return out


def _candidates(task: tasks.Task, refs: list[list[str]]) -> list[str]:
    return task.candidates() if task.candidates else sorted({r for rs in refs for r in rs})


def _question(b: dict) -> dict:
    return {"question_tokens": jnp.asarray(b["question_tokens"])} if "question_tokens" in b else {}


def evaluate(run: runs.Run, *, split: str, method: str = "greedy", limit: int | None = None,
             task_names: list[str] | None = None, progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics {task: {metric: value}}, prediction rows) for `split`. The split's content is
    set by the config's `data.seed` only, so every seed and arm of a study sees the same data."""
    config, model, params, tok = run.config, run.model, run.params, run.tokenizer
    batch_size = config.eval.batch_size
    data = runs.load_data(config, tok, split, task_names=task_names or list(mixtures.get_mixture(config.mixture).tasks), limit=limit)
    image_tokens = runs.image_tokens(config, model, params, data.images, data.image_keys, desc=f"encode {split}")
    results, rows = {}, []
    rng = jax.random.PRNGKey(config.seed)
    shapes = decode_shapes(data.tasks, config.data.max_len, method)
    for enc in data.tasks:
        task = tasks.get_task(enc.name)
        P, max_new, keep = shapes[enc.name]
        preds = []
        batches = pipeline.eval_batches(enc, batch_size)
        for b in tqdm(batches, desc=f"decode {enc.name}", total=-(-len(enc) // batch_size), disable=not progress):
            toks = decode.generate(model, params, jnp.asarray(b["tokens"]), jnp.asarray(b["prefix_len"]),
                                   image_tokens=jnp.asarray(image_tokens[b["image_row"]]), method=method,
                                   max_new_tokens=max_new, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                   rng=jax.random.fold_in(rng, len(preds)), prompt_width=P, **_question(b))
            toks = np.asarray(toks[0] if isinstance(toks, tuple) else toks)
            if toks.ndim == 3:  # beam search: keep the best hypothesis
                toks = toks[:, 0]
            toks = toks[:, :keep]
            preds += [tok.decode(t) for t, v in zip(toks, b["valid"]) if v]
        refs = enc.references
        results[enc.name] = score_predictions(task.metrics, preds, refs, enc.families)
        if task.family == "classification" and config.eval.score_classes:
            results[enc.name]["exact_match_scoring"] = _score_classes(
                model, params, tok, enc, image_tokens, _candidates(task, refs), batch_size)
        for i, p in enumerate(preds):
            rows.append({"task": enc.name, "image_id": data.image_keys[enc.image_row[i]],
                         "prompt": enc.turns[i][0][0], "family": enc.families[i], "prediction": p,
                         "references": refs[i]})
    return results, rows


def decode_shapes(encs, max_len: int, method: str) -> dict[str, tuple[int, int, int]]:
    """{task: (prompt width, new tokens decoded, new tokens kept)}. Each task may generate its
    longest answer + 2 tokens after its longest prompt. Greedy and sampled token i depends only on
    the tokens before it, so the tasks of a split decode with one shared shape (the widest prompt,
    the largest budget: one compiled program instead of one per task) and each keeps its own
    budget of tokens, as long as that shape fits max_len. Beam search ranks hypotheses by length
    against its budget, so it keeps per-task shapes."""
    own = {}
    for enc in encs:
        P = int(enc.prefix_len.max())
        own[enc.name] = (P, min(int(enc.loss_mask.sum(1).max()) + 2, max_len - P))
    width, new = max(p for p, _ in own.values()), max(n for _, n in own.values())
    if decode.parse_method(method).name != "beam" and width + new <= max_len:
        return {name: (width, new, n) for name, (_, n) in own.items()}
    return {name: (p, n, n) for name, (p, n) in own.items()}


def _score_classes(model, params, tok, enc, image_tokens, candidates, batch_size) -> float:
    """Classification by ranking every candidate class name by its likelihood."""
    cand = tok.encode(candidates)
    width = max(len(c) for c in cand) + 1
    cand_tokens = np.zeros((len(cand), width), np.int32)
    for i, c in enumerate(cand):
        cand_tokens[i, :len(c) + 1] = c + [tok.eos_id]
    P = int(enc.prefix_len.max())
    hits = []
    for b in pipeline.eval_batches(enc, batch_size):
        best, _ = decode.classify_by_scoring(
            model, params, jnp.asarray(b["tokens"][:, :P]), jnp.asarray(b["prefix_len"]), jnp.asarray(cand_tokens),
            image_tokens=jnp.asarray(image_tokens[b["image_row"]]), pad_id=tok.pad_id, **_question(b))
        for k, i, ok in zip(np.asarray(best), b["index"], b["valid"]):
            if ok:
                hits.append(float(candidates[k] in enc.references[i]))
    return metrics.mean(hits)


def write(workdir: Path, name: str, results: dict, rows: list[dict], info: dict) -> Path:
    """eval/<name>/metrics.json, predictions.jsonl and info.json (the step scored, split, decoding,
    images per task: what `report.score_history` plots against steps), each written whole or not
    at all; info.json last, so a folder with it holds a finished evaluation."""
    out = Path(workdir) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "info.json").unlink(missing_ok=True)  # a reused folder: its old step must not label the new scores
    for fname, text in (("predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                        ("metrics.json", json.dumps(results, indent=2)), ("info.json", json.dumps(info))):
        checkpoints.write_atomic(out / fname, text)
    return out


def folder_name(split: str, method: str | None, limit: int | None) -> str:
    """eval/<split> for the config's own decoding and limit; otherwise a folder named by them
    (test-beam_4-limit50), so rescoring a run never replaces the scores its training wrote."""
    parts = [split] + ([re.sub(r"[^A-Za-z0-9.]+", "_", method)] if method else []) + ([f"limit{limit}"] if limit else [])
    return "-".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litlab.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--split", default="test", choices=tasks.EVAL_SPLITS)
    ap.add_argument("--decode", default=None, help="greedy | beam:K[,alpha=A] | sample:t=T,k=K,p=P")
    ap.add_argument("--limit", type=int, default=None, help="images per task (default: the config's eval.limit)")
    args = ap.parse_args(argv)
    try:
        evaluator = Evaluator(args.split, method=args.decode, limit=args.limit,
                              name=folder_name(args.split, args.decode, args.limit))
        run = runs.load(args.workdir)
        results = evaluator(run)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(json.dumps({"step": run.step, "split": args.split, "eval_dir": str(Path(args.workdir) / "eval" / evaluator.name),
                      "metrics": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
