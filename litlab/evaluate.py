"""Evaluators: decode every task of a split, score it, write metrics and predictions.

    python -m litlab.evaluate --workdir DIR [--split test|compositional|val] [--decode greedy|beam:4|...]

Writes DIR/eval/<split>/metrics.json as {task: {metric: value}} and predictions.jsonl beside it
(task, image id, prompt, prediction, references). The training loop calls the same code. Each
eval image is encoded once, even when several tasks ask about it; classification is scored both
by generation and, CapPa-style, by ranking every class name by its likelihood.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from litlab import checkpoints, decode, features, metrics, train
from litlab.data import mixtures, pipeline, tasks
from litlab.data.tokenizer import Tokenizer


def score_predictions(names: tuple[str, ...], preds: list[str], refs: list[list[str]]) -> dict[str, float]:
    """The task's metrics over aligned predictions and references."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists.")
    missing = [i for i, r in enumerate(refs) if not r]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no references; every evaluated example needs at least one.")
    out = {}
    for name in names:
        if name == "exact_match":
            out[name] = metrics.mean([metrics.exact_match(p, r) for p, r in zip(preds, refs)])
        elif name == "vqa_accuracy":
            out[name] = metrics.mean([metrics.vqa_accuracy(p, r) for p, r in zip(preds, refs)])
        elif name == "anls":
            out[name] = metrics.mean([metrics.anls(p, r) for p, r in zip(preds, refs)])
        elif name == "cer":
            out[name] = metrics.corpus_character_error_rate(preds, [r[0] for r in refs])
        elif name == "cider_d":
            out[name] = metrics.cider_d(dict(enumerate(preds)), dict(enumerate(refs)))[0]
        else:
            raise ValueError(f"unknown metric {name!r}; litlab.evaluate knows exact_match, vqa_accuracy, "
                             "anls, cer and cider_d.")
    return out


def _candidates(task: tasks.Task, refs: list[list[str]]) -> list[str]:
    return task.candidates() if task.candidates else sorted({r for rs in refs for r in rs})


def evaluate(model, params, tok: Tokenizer, config, *, split: str, method: str = "greedy",
             limit: int | None = None, task_names: list[str] | None = None, batch_size: int = 256,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """(metrics {task: {metric: value}}, prediction rows) for `split`."""
    names = list(task_names or mixtures.get_mixture(config.mixture).tasks)
    mixture = mixtures.Mixture(f"eval_{split}", tuple(names), "uniform", "mixed")
    data = pipeline.build(mixture, split, tok, max_len=config.data.max_len,
                          prompting=tasks.Prompting(config.prompt_style, config.prompt_shared),
                          seed=config.seed, resolution=config.data.resolution, limit=limit)
    image_tokens = features.encode_all(train.encoder_fn(model, params), data.images, model.token_shape(),
                                       batch_size=batch_size, desc=f"encode {split}")
    results, rows = {}, []
    rng = jax.random.PRNGKey(config.seed)
    for enc in data.tasks:
        task = tasks.get_task(enc.name)
        P = int(enc.prefix_len.max())
        max_new = min(int(enc.loss_mask.sum(1).max()) + 2, config.data.max_len - P)
        preds = []
        batches = pipeline.eval_batches(enc, batch_size)
        for b in tqdm(batches, desc=f"decode {enc.name}", total=-(-len(enc) // batch_size), disable=not progress):
            toks = decode.generate(model, params, jnp.asarray(b["tokens"][:, :P]), jnp.asarray(b["prefix_len"]),
                                   image_tokens=jnp.asarray(image_tokens[b["image_row"]]), method=method,
                                   max_new_tokens=max_new, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                   rng=jax.random.fold_in(rng, len(preds)))
            toks = np.asarray(toks[0] if isinstance(toks, tuple) else toks)
            if toks.ndim == 3:  # beam search: keep the best hypothesis
                toks = toks[:, 0]
            preds += [tok.decode(t) for t, v in zip(toks, b["valid"]) if v]
        refs = enc.references
        results[enc.name] = score_predictions(task.metrics, preds, refs)
        if task.family == "classification":
            results[enc.name]["exact_match_scoring"] = _score_classes(
                model, params, tok, enc, image_tokens, _candidates(task, refs), batch_size)
        for i, p in enumerate(preds):
            rows.append({"task": enc.name, "image_id": data.image_keys[enc.image_row[i]],
                         "prompt": enc.turns[i][0][0], "prediction": p, "references": refs[i]})
    return results, rows


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
            image_tokens=jnp.asarray(image_tokens[b["image_row"]]), pad_id=tok.pad_id)
        for k, i, ok in zip(np.asarray(best), b["index"], b["valid"]):
            if ok:
                hits.append(float(candidates[k] in enc.references[i]))
    return metrics.mean(hits)


def write(workdir: Path, name: str, results: dict, rows: list[dict]) -> Path:
    out = Path(workdir) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    with open(out / "predictions.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return out


def evaluate_run(run, *, split: str, method: str | None = None, limit: int | None = None,
                 progress: bool = True, tag: str | None = None) -> dict:
    c = run.config
    results, rows = evaluate(run.model, run.params, run.tokenizer, c, split=split, method=method or c.eval.decode,
                             limit=limit if limit is not None else c.eval.limit, task_names=list(c.eval.tasks) or None,
                             batch_size=c.eval.batch_size, progress=progress)
    write(run.workdir, tag or split, results, rows)
    return results


def load_workdir(workdir: str | Path):
    """(config, model, params, tokenizer) of the latest checkpoint in a training workdir."""
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {workdir} a litlab training workdir?")
    config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
    tok = Tokenizer()
    model = train.build_model(config, tok.vocab_size)
    params = train.init_params(model, config)
    schedule = train.make_schedule(config)
    tx, _ = train.make_optimizer(config, params, schedule)
    abstract = jax.eval_shape(lambda: train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)))
    ckpt = checkpoints.Checkpointer(workdir, keep=config.keep_checkpoints)
    state, step = ckpt.restore(abstract)
    ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no readable checkpoint in {workdir / 'checkpoints'}; train first.")
    return config, model, jax.device_get(state.params), tok, step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litlab.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--split", default="test", choices=tasks.EVAL_SPLITS)
    ap.add_argument("--decode", default=None, help="greedy | beam:K[,alpha=A] | sample:t=T,k=K,p=P")
    ap.add_argument("--limit", type=int, default=None, help="images per task (default: the config's eval.limit)")
    args = ap.parse_args(argv)
    try:
        config, model, params, tok, step = load_workdir(args.workdir)
        run = train.Run(config, Path(args.workdir), model, params, tok, None, [], None, 0.0)
        results = evaluate_run(run, split=args.split, method=args.decode, limit=args.limit)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(json.dumps({"step": step, "split": args.split, "metrics": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
