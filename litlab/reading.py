"""Reading letters off encoder tokens: per-token glyph targets and a CTC reader over token columns.

The decoder can only read what the frozen tokens say. Two ways to make tokens (and to check that
they) name letters, both free of the alignment problem that sank a "letter at position i" head:

* glyph targets: the renderer knows every letter's box, so each token is told which letters
  have their center inside it, left to right, in ``SLOTS`` slots (an 8 px token holds at most
  two letters of the smallest rendered word, three leave room for "ili");
* CTC over token columns: a word is read left to right, so each column of the token grid
  (its rows concatenated) emits ``FRAMES_PER_COLUMN`` frames, and CTC sums over alignments.

The encoder's pretraining (``litlab.pretrain``) can use either as a loss; the reading probe
(``litlab.probe --reading``) trains a fresh linear CTC reader on frozen tokens to score them.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from litlab import metrics

CHARS = string.ascii_lowercase
NO_LETTER = len(CHARS)  # glyph-slot class of an empty slot
SLOTS = 3
BLANK = 0  # CTC class 0 is the blank; letter i is class i + 1
FRAMES_PER_COLUMN = 3  # 8 columns give 24 frames: an 8-letter word with repeats still aligns


def record_glyphs(record: Mapping) -> list[tuple]:
    """Every (char, x0, y0, x1, y1) glyph box of a rendered record: a words image's own glyphs
    and those of the words that text_scenes objects carry."""
    out = list(record.get("glyphs", ()))
    for obj in record.get("objects", ()):
        out.extend(obj.get("glyphs", ()))
    return out


def glyph_targets(glyphs: Iterable[Sequence], resolution: int, patch: int, what="record") -> np.ndarray:
    """int8 [tokens, SLOTS]: for each token (row-major, as the ViT orders them), the letters whose
    box center lies inside it, left to right, then NO_LETTER."""
    side = resolution // patch
    cells: dict[int, list[tuple[float, int]]] = {}
    for ch, x0, y0, x1, y1 in glyphs:
        if ch not in CHARS:
            raise ValueError(f"glyph {ch!r} of {what} is not a lowercase letter; glyph targets cover {CHARS}")
        x, y = (x0 + x1) / 2, (y0 + y1) / 2
        col, row = (min(max(int(v // patch), 0), side - 1) for v in (x, y))
        cells.setdefault(row * side + col, []).append((x, CHARS.index(ch)))
    out = np.full((side * side, SLOTS), NO_LETTER, np.int8)
    for token, letters in cells.items():
        if len(letters) > SLOTS:
            raise ValueError(f"{len(letters)} letter centers fall in one {patch}x{patch} token of {what}; "
                             f"reading.SLOTS={SLOTS} holds at most {SLOTS} (raise it, or render larger text)")
        out[token, :len(letters)] = [c for _, c in sorted(letters)]
    return out


def ctc_labels(words: Sequence[str], max_len: int) -> np.ndarray:
    """int32 [n, max_len]: letter i as class i + 1, padded with -1 ("" for an image with no word)."""
    out = np.full((len(words), max_len), -1, np.int32)
    for i, w in enumerate(words):
        if len(w) > max_len or not set(w) <= set(CHARS):
            raise ValueError(f"word {w!r} is not up to {max_len} lowercase letters; the CTC reader "
                             "cannot spell it")
        out[i, :len(w)] = [CHARS.index(ch) + 1 for ch in w]
    return out


def columns(tokens, side: int):
    """[B, side*side, D] row-major tokens -> [B, side columns, side*D]: each column's rows stacked,
    so a reader sees the whole column wherever the (slanted) text line crosses it."""
    b, _, d = tokens.shape
    grid = tokens.reshape(b, side, side, d)  # [B, row, col, D]
    return grid.transpose(0, 2, 1, 3).reshape(b, side, side * d)


class CTCReader(nn.Module):
    """Linear: each token column emits FRAMES_PER_COLUMN frames of 27 logits (blank + letters)."""

    side: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Dense(FRAMES_PER_COLUMN * (len(CHARS) + 1))(columns(tokens, self.side))
        return x.reshape(x.shape[0], self.side * FRAMES_PER_COLUMN, len(CHARS) + 1)


def ctc_loss(logits, labels):
    """Per-example CTC negative log-likelihood; `labels` int [B, L] padded with -1."""
    label_pad = (labels < 0).astype(jnp.float32)
    return optax.ctc_loss(logits, jnp.zeros(logits.shape[:2]), jnp.maximum(labels, 0), label_pad,
                          blank_id=BLANK)


def ctc_decode(logits: np.ndarray) -> list[str]:
    """Best path: the likeliest class per frame, repeats merged, blanks dropped."""
    out = []
    for row in np.asarray(logits).argmax(-1):
        keep = row[np.r_[True, row[1:] != row[:-1]]]
        out.append("".join(CHARS[c - 1] for c in keep if c != BLANK))
    return out


def reading_scores(predicted: Sequence[str], truth: Sequence[str]) -> dict:
    """Character accuracy (1 - edit distance / length, floored at 0, averaged over words) and
    exact word accuracy."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"need one prediction per word, got {len(predicted)} for {len(truth)} words")
    char = [max(0.0, 1 - metrics.levenshtein(p, t) / len(t)) for p, t in zip(predicted, truth)]
    return {"char_accuracy": float(np.mean(char)),
            "exact_word": float(np.mean([p == t for p, t in zip(predicted, truth)])), "n": len(truth)}
