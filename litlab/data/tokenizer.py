"""SentencePiece tokenizer and the one place where litlab's special tokens are defined.

Every sequence the decoder sees is laid out as

    BOS, prompt ids..., SEP, target ids..., EOS, PAD...

The prompt (prefix) is never in the loss; the target (suffix) and its EOS are. Any SentencePiece
`.model` works (a user's c4_en or Gemma file, or the benchmark's shipped one); where a model lacks
a piece, the fallbacks below say what stands in for it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from litlab.assets import asset_path

# The embedded benchmark's tokenizer reserves these ids (train_tokenizer below enforces them).
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
SEP_PIECE = "<sep>"
# Where a user's model has no <sep> piece, the first of these pieces that it has is the separator.
SEP_FALLBACK_PIECES = ("<sep>", "<0x0A>", "\n", "▁:", ":")
try:
    DEFAULT_MODEL = asset_path("tokenizer", "litlab_bench.model")
except FileNotFoundError:  # not built yet: `python -m litlab.data tokenizer` writes it here
    DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "data" / "tokenizer" / "litlab_bench.model"


class Tokenizer:
    """A SentencePiece model plus the pad/bos/eos/sep ids that the sequence layout needs."""

    def __init__(self, model_path: str | Path = DEFAULT_MODEL):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"SentencePiece model {path} not found. Pass the path of a .model file; the "
                "benchmark's own is rebuilt by `python -m litlab.data tokenizer`.")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0
        self.eos_id = self.sp.eos_id()
        if self.eos_id < 0:
            raise ValueError(f"{path}: the model defines no EOS id; litlab needs one to end targets.")
        # T5/c4_en models have no BOS: EOS then starts the sequence, which is harmless because
        # decoding only stops on an EOS it generates itself.
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else self.eos_id
        self.sep_id = self._find_sep()

    def _find_sep(self) -> int:
        unk = self.sp.unk_id()
        for piece in SEP_FALLBACK_PIECES:
            pid = self.sp.piece_to_id(piece)
            if pid != unk and pid < self.vocab_size:
                return pid
        raise ValueError(
            f"{self.path}: none of the separator pieces {SEP_FALLBACK_PIECES} is in the vocabulary;"
            " add a <sep> user-defined symbol when training the model.")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS, without pad/bos/sep."""
        out = []
        for i in np.asarray(list(ids)).tolist():
            if i == self.eos_id and out:
                break
            if i in (self.pad_id, self.bos_id, self.sep_id, self.eos_id):
                continue
            out.append(i)
        return self.sp.decode(out)

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids)]


def train_tokenizer(texts: Iterable[str], model_path: str | Path, vocab_size: int) -> Path:
    """Trains a unigram SentencePiece model with litlab's special ids and writes it atomically.

    Single-threaded and with a fixed seed sentence order, so the same texts give the same model.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, num_threads=1,
        pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        user_defined_symbols=[SEP_PIECE], hard_vocab_limit=False,
        shuffle_input_sentence=False, minloglevel=2)
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(path)
    return path


def encode_examples(tok: Tokenizer, turns: Sequence[Sequence[tuple[str, str]]], max_len: int):
    """Lays out examples as BOS prompt SEP target EOS (repeated per turn) in fixed-length arrays.

    `turns[i]` is a list of (prompt, target) pairs; most examples have one, packed VQA examples
    have one per question. Returns (tokens [N, max_len] int32, prefix_len [N] int32,
    loss_mask [N, max_len] float32 marking target and EOS tokens, n_truncated). Examples longer
    than max_len are truncated at the end (the mask follows the kept tokens) and counted, so a
    statistics report can say how many there were.
    """
    n = len(turns)
    flat_prompts = [p for ex in turns for p, _ in ex]
    flat_targets = [t for ex in turns for _, t in ex]
    p_ids = tok.encode(flat_prompts)
    t_ids = tok.encode(flat_targets)
    tokens = np.full((n, max_len), tok.pad_id, np.int32)
    mask = np.zeros((n, max_len), np.float32)
    prefix_len = np.zeros((n,), np.int32)
    n_truncated = 0
    k = 0
    for i, ex in enumerate(turns):
        seq, m = [tok.bos_id], [0.0]
        for j in range(len(ex)):
            p, t = p_ids[k], t_ids[k]
            k += 1
            seq += p + [tok.sep_id]
            m += [0.0] * (len(p) + 1)
            if j == 0:
                prefix_len[i] = len(seq)
            seq += t + [tok.eos_id]
            m += [1.0] * (len(t) + 1)
        if len(seq) > max_len:
            n_truncated += 1
            seq, m = seq[:max_len], m[:max_len]
        if prefix_len[i] > max_len:
            prefix_len[i] = max_len
        tokens[i, :len(seq)] = seq
        mask[i, :len(m)] = m
    return tokens, prefix_len, mask, n_truncated
