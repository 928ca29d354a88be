"""Task mixtures: rates, batching strategies, and a stateless, resumable sampling schedule.

seqio samples a mixture with a random generator whose state must be checkpointed. Here the
schedule is a pure function of (seed, step) instead: the example stream is cut into blocks of
`BLOCK` slots, each block holds every task's quota (its rate times the block, rounded by largest
remainder) in a seeded shuffled order, and each task walks through seeded per-epoch permutations
of its own examples. So batch `s` can be computed without replaying batches 0..s-1, a resumed run
continues the same stream, and realized proportions track the rates to within one block.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Mapping, Sequence

import numpy as np

STRATEGIES = ("mixed", "homogeneous", "packed")
BLOCK = 1024  # slots per scheduling block; proportions are exact at every block boundary


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Which tasks, at which rates, batched how.

    rates: "uniform", "size" (proportional to number of examples), {"temperature": T}
    (size ** (1/T), seqio/T5 style), or an explicit {task: weight} mapping.
    strategy: "mixed" (tasks interleaved inside a batch), "homogeneous" (one task per batch),
    or "packed" (VQA tasks use their all-questions-of-one-image view; batches are mixed).
    """
    name: str
    tasks: tuple[str, ...]
    rates: str | Mapping = "size"
    strategy: str = "mixed"

    def __post_init__(self):
        if not self.tasks:
            raise ValueError(f"mixture {self.name!r} has no tasks.")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"mixture {self.name!r}: unknown strategy {self.strategy!r}; "
                             f"choose one of {STRATEGIES}.")


def resolve_rates(mixture: Mixture, sizes: Mapping[str, int]) -> np.ndarray:
    """Normalized rates in the order of `mixture.tasks`, with clear errors for bad weights."""
    rates = mixture.rates
    n = np.array([sizes[t] for t in mixture.tasks], np.float64)
    if rates == "uniform":
        w = np.ones_like(n)
    elif rates == "size":
        w = n
    elif isinstance(rates, Mapping) and set(rates) == {"temperature"}:
        t = float(rates["temperature"])
        if t <= 0:
            raise ValueError(f"mixture {mixture.name!r}: temperature must be > 0, got {t}.")
        w = n ** (1.0 / t)
    elif isinstance(rates, Mapping):
        unknown = sorted(set(rates) - set(mixture.tasks))
        if unknown:
            raise ValueError(f"mixture {mixture.name!r}: weights name tasks not in the mixture: "
                             f"{unknown}; its tasks are {list(mixture.tasks)}.")
        w = np.array([float(rates.get(t, 0.0)) for t in mixture.tasks])
        negative = [t for t, x in zip(mixture.tasks, w) if x < 0]
        if negative:
            raise ValueError(f"mixture {mixture.name!r}: negative weights for {negative}; "
                             "weights must be >= 0.")
    else:
        raise ValueError(f"mixture {mixture.name!r}: rates must be 'uniform', 'size', "
                         f"{{'temperature': T}} or a {{task: weight}} dict, got {rates!r}.")
    if not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"mixture {mixture.name!r}: weights {dict(zip(mixture.tasks, w))} sum to "
                         "zero (or are not finite); give at least one task a positive weight.")
    empty = [t for t, x, m in zip(mixture.tasks, w, n) if x > 0 and m == 0]
    if empty:
        raise ValueError(f"mixture {mixture.name!r}: tasks {empty} have a positive rate but no "
                         "examples in this split.")
    return w / w.sum()


def _quotas(rates: np.ndarray, total: int) -> np.ndarray:
    """Largest-remainder rounding of rates * total: integers summing exactly to total."""
    raw = rates * total
    q = np.floor(raw).astype(np.int64)
    rest = total - q.sum()
    q[np.argsort(-(raw - q), kind="stable")[:rest]] += 1
    return q


def _salt(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


class Schedule:
    """Maps (step) -> the (task index, example index) pairs of that step's batch.

    `unit` is the number of slots one task draw fills: 1 for mixed batches (each slot one
    example), `batch_size` for homogeneous batches (each slot one whole batch of one task).
    """

    def __init__(self, rates: np.ndarray, sizes: Sequence[int], batch_size: int, *,
                 homogeneous: bool, seed: int):
        self.rates, self.sizes = np.asarray(rates), np.asarray(sizes, np.int64)
        self.batch_size, self.homogeneous, self.seed = batch_size, homogeneous, seed
        self.quota = _quotas(self.rates, BLOCK)
        self._block_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Task id of each slot in block b (a seeded shuffle of the quotas), and for each slot
        how many draws of each task precede it inside the block."""
        if b not in self._block_cache:
            slots = np.repeat(np.arange(len(self.quota)), self.quota)
            block = np.random.default_rng([self.seed, _salt("block"), b]).permutation(slots)
            onehot = np.zeros((BLOCK, len(self.quota)), np.int64)
            onehot[np.arange(BLOCK), block] = 1
            # Keep one block only: training walks forward through the stream.
            self._block_cache = {b: (block, np.cumsum(onehot, axis=0) - onehot)}
        return self._block_cache[b]

    def _slot_tasks(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Task ids of slots [start, start+count) and each slot's position in its task stream."""
        slots = np.arange(start, start + count)
        blocks = slots // BLOCK
        tasks = np.empty(count, np.int64)
        pos = np.empty(count, np.int64)
        for b in np.unique(blocks):
            sel = blocks == b
            block, before = self._block(int(b))
            within = slots[sel] - b * BLOCK
            tasks[sel] = block[within]
            # Draws of task t before this slot = full blocks * quota + earlier slots in the block.
            pos[sel] = b * self.quota[block[within]] + before[within, block[within]]
        return tasks, pos

    def _examples(self, task: int, positions: np.ndarray) -> np.ndarray:
        """Example index at each stream position of a task: seeded permutation per epoch."""
        n = int(self.sizes[task])
        epochs, offs = positions // n, positions % n
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            key = (task, int(e))
            if key not in self._perm_cache:
                if len(self._perm_cache) > 64:
                    self._perm_cache.clear()
                rng = np.random.default_rng([self.seed, _salt("epoch", task), int(e)])
                self._perm_cache[key] = rng.permutation(n)
            sel = epochs == e
            out[sel] = self._perm_cache[key][offs[sel]]
        return out

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(task ids [B], example indices [B]) of batch `step`."""
        B = self.batch_size
        if self.homogeneous:
            task, pos = self._slot_tasks(step, 1)
            t = int(task[0])
            positions = pos[0] * B + np.arange(B)
            return np.full(B, t), self._examples(t, positions)
        tasks, pos = self._slot_tasks(step * B, B)
        idx = np.empty(B, np.int64)
        for t in np.unique(tasks):
            sel = tasks == t
            idx[sel] = self._examples(int(t), pos[sel])
        return tasks, idx


EMBEDDED_TASKS = ("objects_cls", "scenes_caption", "scenes_vqa", "words_ocr", "text_vqa")
_MIXTURES: dict[str, Mixture] = {}


def register_mixture(mixture: Mixture) -> Mixture:
    _MIXTURES[mixture.name] = mixture
    return mixture


def get_mixture(name: str) -> Mixture:
    """A registered mixture; the single-task mixture of a registered task of that name; or, for
    "TASK+TASK[+...]", those tasks at uniform rates, mixed in each batch: an ad-hoc mixture from the
    command line (`--config.mixture=scenes_vqa_existence+scenes_caption`) without registering one."""
    if name in _MIXTURES:
        return _MIXTURES[name]
    from litlab.data import tasks  # tasks registers on import; avoid a cycle at module load
    if name in tasks.task_names():
        return Mixture(name, (name,), "uniform", "mixed")
    parts = name.split("+")
    if len(parts) > 1:
        unknown = [p for p in parts if p not in tasks.task_names()]
        nested = [] if unknown else [(p, tasks.get_task(p).subset_of) for p in parts
                                     if tasks.get_task(p).subset_of in parts]
        why = ("write it without spaces (the name is part of the run's identity)" if any(p != p.strip() for p in parts)
               else f"unknown: {unknown} (registered mixtures cannot be joined, only tasks)" if unknown
               else "a task repeats" if len(set(parts)) != len(parts)
               else f"{nested[0][0]} is a part of {nested[0][1]}, so its examples would be trained twice" if nested
               else "")
        if why:
            raise KeyError(f"mixture {name!r}: a 'TASK+TASK' mixture takes distinct task names; {why}. "
                           f"Tasks: {tasks.task_names()}.")
        return Mixture(name, tuple(parts), "uniform", "mixed")
    raise KeyError(f"unknown mixture {name!r}; registered mixtures: {sorted(_MIXTURES)}, "
                   f"any task name for a single-task mixture: {tasks.task_names()}, "
                   "or task names joined by '+' for those tasks at uniform rates.")


def mixture_names() -> list[str]:
    return sorted(_MIXTURES)


register_mixture(Mixture("all_uniform", EMBEDDED_TASKS, "uniform", "mixed"))
register_mixture(Mixture("all_by_size", EMBEDDED_TASKS, "size", "mixed"))
register_mixture(Mixture("all_temperature", EMBEDDED_TASKS, {"temperature": 2.0}, "mixed"))
register_mixture(Mixture("all_homogeneous", EMBEDDED_TASKS, "uniform", "homogeneous"))
register_mixture(Mixture("all_packed", EMBEDDED_TASKS, "uniform", "packed"))
# The quickstart's: the tasks a decoder learns slowest (questions, reading) at twice the rate of
# those it learns in a few hundred steps (objects_cls, captions; see the README's table).
register_mixture(Mixture("all_weighted", EMBEDDED_TASKS, {"objects_cls": 1, "scenes_caption": 1, "scenes_vqa": 2,
                                                          "words_ocr": 2, "text_vqa": 2}, "mixed"))
