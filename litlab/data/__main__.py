"""`python -m litlab.data preview|stats|tokenizer`: look at tasks, mixtures and the tokenizer."""

from __future__ import annotations

import argparse
import json
import sys

from litlab.data import mixtures, pipeline, preview, tasks, tokenizer as tokenizer_lib
from litlab.data import corpus


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m litlab.data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preview", help="write a labelled sample grid of a task to PNG")
    p.add_argument("--task", required=True, help=f"one of {tasks.task_names()}")
    p.add_argument("--split", default="train")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-style", default="natural", choices=tasks.PROMPT_STYLES)
    s = sub.add_parser("stats", help="print JSON statistics of a mixture")
    s.add_argument("--mixture", required=True, help=f"one of {mixtures.mixture_names()}, a task name, or task names joined by '+'")
    s.add_argument("--split", default="train")
    s.add_argument("--batches", type=int, default=100)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--max-len", type=int, default=48)
    s.add_argument("--limit", type=int, default=None, help="images per task (default: whole split)")
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("tokenizer", help="train the embedded benchmark's SentencePiece model")
    t.add_argument("--out", default=str(tokenizer_lib.DEFAULT_MODEL))
    t.add_argument("--vocab-size", type=int, default=corpus.VOCAB_SIZE)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "preview":
            ts = tasks.load_task(args.task, args.split, seed=args.seed, limit=max(args.n, 1),
                                 prompting=tasks.Prompting(args.prompt_style))
            print(preview.write_grid(ts, args.out, args.n))
        elif args.cmd == "stats":
            data = pipeline.build(mixtures.get_mixture(args.mixture), args.split, tokenizer_lib.Tokenizer(),
                                  max_len=args.max_len, seed=args.seed, limit=args.limit)
            print(json.dumps(pipeline.describe(data, args.batch_size, seed=args.seed, batches=args.batches), indent=2))
        else:
            print(corpus.build_tokenizer(args.out, args.vocab_size))
    except (KeyError, ValueError, FileNotFoundError, IndexError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
