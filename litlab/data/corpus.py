"""The text the embedded benchmark's tokenizer is trained on, and the command that trains it.

Training text = every prompt style's prompts and every target of a slice of each embedded task's
train split, plus the whole train word list (OCR must be able to spell any of them). Held-out
words are excluded, so the compositional OCR split also tests spelling with unseen pieces.
"""

from __future__ import annotations

from pathlib import Path

from litlab.data import mixtures, scenes, tasks, tokenizer

VOCAB_SIZE = 1000
IMAGES_PER_TASK = 3000


def training_text(images_per_task: int = IMAGES_PER_TASK) -> list[str]:
    lines = []
    for name in mixtures.EMBEDDED_TASKS:
        for style in tasks.PROMPT_STYLES:
            for shared in (False, True):
                ts = tasks.load_task(name, "train", limit=images_per_task,
                                     prompting=tasks.Prompting(style, shared))
                for turns in ts.turns:
                    lines += [p for p, _ in turns if p]
                    if style == "natural" and not shared:
                        lines += [t for _, t in turns]
    return lines + list(scenes.train_words())


def build_tokenizer(out: str | Path = tokenizer.DEFAULT_MODEL, vocab_size: int = VOCAB_SIZE) -> Path:
    return tokenizer.train_tokenizer(training_text(), out, vocab_size)
