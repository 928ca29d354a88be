"""Tasks (seqio-like): a source, a prompt, a target, a metric, and references for evaluation.

A task turns each source record into one or more items `{"question", "target", "references"}`;
the prompt around the question is chosen at load time because prompt specificity is a study
axis (no task cue, a task token, or a natural-language instruction; per task or shared by all).
`load_task` materializes a split: images (deduplicated by image key, so features are computed
once per image) and text turns ready for the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from litlab.data import language, scenes, sources

PROMPT_STYLES = ("none", "token", "natural")
# Where a VQA question goes: into the decoder's prompt, beside the image tokens as memory (only
# the task cue stays in the prompt), or nowhere (the image-only arm). The modality-combination axis.
QUESTION_PLACES = ("prompt", "memory", "none")
SHARED_TOKEN = "task"
SHARED_INSTRUCTION = "Respond to the image."
EVAL_SPLITS = ("val", "test", "compositional")


@dataclasses.dataclass(frozen=True)
class Prompting:
    """How precisely the decoder is told what to do (the conditioning-specificity axis), and
    where the question goes (the modality-combination axis)."""
    style: str = "natural"
    shared: bool = False
    question: str = "prompt"

    def __post_init__(self):
        if self.style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {self.style!r}; choose one of {PROMPT_STYLES}.")
        if self.question not in QUESTION_PLACES:
            raise ValueError(f"unknown question place {self.question!r}; choose one of {QUESTION_PLACES}.")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    source: str
    family: str  # classification | captioning | vqa | ocr
    metrics: tuple[str, ...]  # metric names understood by litlab.evaluate; the first is primary
    token: str
    instruction: str  # natural-language prompt; "{question}" is replaced by the item's question
    make: Callable[[dict, np.random.Generator], list[dict]]
    packable: bool = False  # several questions per image that can share one sequence
    # Classification: every class name, for scoring them all (default: the split's references).
    candidates: Callable[[], list[str]] | None = None
    # The task whose examples this one selects from (a question family's base task): mixing the
    # two would train those examples twice under two names.
    subset_of: str | None = None

    def prompt(self, question: str | None, prompting: Prompting) -> str:
        q = (question or "") if prompting.question == "prompt" else ""
        if prompting.style == "none":
            return q
        if prompting.style == "token":
            return f"{SHARED_TOKEN if prompting.shared else self.token} {q}".strip()
        if prompting.shared:
            return f"{SHARED_INSTRUCTION} {q}".strip()
        return self.instruction.format(question=q).strip()


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; registered tasks: {sorted(_TASKS)}.")
    return _TASKS[name]


def task_names() -> list[str]:
    return sorted(_TASKS)


def _majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def _classification(rec, rng):
    name = language.class_name(rec["objects"][0])
    return [{"question": None, "target": name, "references": [name]}]


def _captioning(rec, rng):
    caps = language.captions(rec, rng)
    return [{"question": None, "target": c, "references": caps} for c in caps]


def _questions(ask):
    """VQA items from a question generator: the majority answer is the target, all 10 are references."""
    def make(rec, rng):
        return [{"question": q["question"], "target": _majority(q["answers"]), "references": q["answers"],
                 "family": q["family"]} for q in ask(rec, rng)]
    return make


_vqa, _text_vqa = _questions(language.vqa), _questions(language.text_vqa)


def _ocr(rec, rng):
    word = language.ocr_target(rec)
    return [{"question": None, "target": word, "references": [word]}]


def _passthrough(rec, rng):
    """Real data (JSONL/TFDS): the record's prefix is the question, its suffix the target."""
    return [{"question": rec["prefix"] or None, "target": rec["suffix"], "references": rec["references"]}]


def _class_names() -> list[str]:
    """All size x color x shape names, held-out pairs included (the compositional split uses them)."""
    return [language.class_name({"size": z, "color": c, "shape": s})
            for z in scenes.SIZES for c in scenes.COLORS for s in scenes.SHAPES]


register_task(Task("objects_cls", "objects", "classification", ("exact_match",), "classify",
                   "What object is this?", _classification, candidates=_class_names))
register_task(Task("scenes_caption", "scenes", "captioning", ("cider_d",), "caption",
                   "Describe the image.", _captioning))
register_task(Task("scenes_vqa", "scenes", "vqa", ("vqa_accuracy", "exact_match"), "vqa",
                   "Answer the question: {question}", _vqa, packable=True))
register_task(Task("words_ocr", "words", "ocr", ("exact_match", "cer"), "ocr",
                   "What word is written?", _ocr))
register_task(Task("text_vqa", "text_scenes", "vqa", ("vqa_accuracy", "anls"), "textvqa",
                   "Read and answer: {question}", _text_vqa, packable=True))


def _one_family(make, family: str):
    def only(rec, rng):
        return [it for it in make(rec, rng) if it["family"] == family]
    return only


# One question family alone ("scenes_vqa_existence", "text_vqa_reading"): to ask whether a skill
# can be learned at all, without the other families' share of the steps (the image_tokens study).
for _base, _families in (("scenes_vqa", language.FAMILIES), ("text_vqa", language.TEXT_FAMILIES)):
    for _family in _families:
        register_task(dataclasses.replace(get_task(_base), name=f"{_base}_{_family}",
                                          make=_one_family(get_task(_base).make, _family), subset_of=_base))


def jsonl_task(name: str, files: dict, family: str, metrics: tuple[str, ...], *, token: str,
               instruction: str = "{question}", image_root=None) -> Task:
    """Registers a JSONL export (PaliGemma transfer layout) as a source and a task over it."""
    sources.register_source(sources.JsonlSource(name, files, image_root))
    return register_task(Task(name, name, family, metrics, token, instruction, _passthrough,
                              packable=family == "vqa"))


def tfds_task(name: str, source: sources.TfdsSource, family: str, metrics: tuple[str, ...], *,
              token: str, instruction: str = "{question}") -> Task:
    sources.register_source(source)
    return register_task(Task(name, source.name, family, metrics, token, instruction, _passthrough))


@dataclasses.dataclass
class TaskSplit:
    """A task's split, materialized: one row per example, images stored once per image key."""
    task: str
    split: str
    images: np.ndarray  # uint8 [n_images, R, R, 3]
    image_keys: list[str]
    image_index: np.ndarray  # int32 [n_examples] -> row of `images`
    turns: list[list[tuple[str, str]]]  # (prompt, target) pairs per example
    references: list[list[str]]  # of the first turn, for evaluation
    stats: dict
    questions: list[str] = dataclasses.field(default_factory=list)  # of the first turn; "" if none
    families: list[str] = dataclasses.field(default_factory=list)  # question family; the task's family if none

    def __len__(self) -> int:
        return len(self.turns)


def cache_dir() -> Path:
    return Path(os.environ.get("LITLAB_CACHE", Path.home() / ".cache" / "litlab"))


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode())


def read_records(source_name: str, split: str, *, seed: int, resolution: int, limit: int | None):
    """(images uint8 [n,...], records without images) of a source split, rendered once and kept
    in the on-disk cache for embedded sources (they are deterministic, so the cache is exact)."""
    src = sources.get_source(source_name)
    sizes = src.split_sizes
    if split not in sizes:
        raise ValueError(f"source {source_name!r} has no split {split!r}; its splits are {sorted(sizes)}.")
    n = sizes[split] if limit is None else min(limit, sizes[split])
    cacheable = source_name in sources.scenes.SOURCES
    # The annotation version in the name: records cached before glyph boxes existed are re-rendered
    # (same pixels), never served without them.
    path = cache_dir() / f"{source_name}-{split}-r{resolution}-s{seed}-n{n}-a{sources.scenes.ANNOTATIONS}.npz"
    if cacheable and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["images"], json.loads(str(z["records"]))
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    records = []
    for i in tqdm(range(n), desc=f"render {source_name}/{split}", leave=False, disable=n < 500):
        rec = dict(src.get(split, i, seed=seed, resolution=resolution))
        images[i] = rec.pop("image")
        rec.setdefault("image_key", f"{source_name}/{split}/{i}")
        records.append(rec)
    if cacheable:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, images=images, records=np.array(json.dumps(records)))
        os.replace(tmp, path)
    return images, records


def load_task(name: str, split: str, *, prompting: Prompting = Prompting(), seed: int = 0,
              resolution: int = 64, limit: int | None = None, packed: bool = False) -> TaskSplit:
    """Materializes `limit` images of a task's split (all by default).

    Eval splits keep one example per (image, prompt), with all its references, so a caption
    task is scored once per image. `packed=True` joins all questions of one image into one
    multi-turn example (the all-QA-pairs-in-one-sequence strategy).
    """
    task = get_task(name)
    if packed and not task.packable:
        raise ValueError(f"task {name!r} ({task.family}) has no questions to pack; only "
                         f"{[t for t in task_names() if _TASKS[t].packable]} can be packed.")
    if packed and prompting.question == "memory":
        raise ValueError("a packed sequence holds several questions, but question memory holds one per "
                         "example; use the 'mixed' or 'homogeneous' strategy with question='memory'.")
    images, records = read_records(task.source, split, seed=seed, resolution=resolution, limit=limit)
    keys, key_row, rows = [], {}, []
    turns, refs, image_index, questions, families = [], [], [], [], []
    converted = 0
    for i, rec in enumerate(records):
        key = rec["image_key"]
        if key not in key_row:
            key_row[key] = len(keys)
            keys.append(key)
            rows.append(i)
        converted += rec.get("converted_from") is not None
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), _split_code(split), i])
        items = task.make(rec, rng)
        if split in EVAL_SPLITS:
            seen, kept = set(), []
            for it in items:
                if it["question"] not in seen:
                    seen.add(it["question"])
                    kept.append(it)
            items = kept
        pairs = [(task.prompt(it["question"], prompting), it["target"]) for it in items]
        if packed:
            pairs, items = [pairs], items[:1]
        else:
            pairs = [[p] for p in pairs]
        for p, it in zip(pairs, items):
            turns.append(p)
            refs.append(list(it["references"]))
            image_index.append(key_row[key])
            questions.append(it["question"] or "")
            families.append(it.get("family", task.family))
    stats = {"images": len(keys), "examples": len(turns), "converted_to_rgb": converted}
    return TaskSplit(name, split, images[np.asarray(rows, np.int64)], keys,
                     np.asarray(image_index, np.int32), turns, refs, stats, questions, families)
