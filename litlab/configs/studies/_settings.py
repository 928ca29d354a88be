"""The three sizes every study runs at. Study files take these and may adjust them.

smoke: seconds; what `make test` runs, to show the study's code path works, not to answer it.
fast:  the default, all seeds: a notebook in about 15 minutes on 2 CPU cores. On 2 cores a
       width-96 decoder step costs 0.13 s (cross) to 0.26 s (prefix) at batch 32 and grows with
       depth (0.65 s for a 6-layer prefix decoder), so fast runs 150 steps of 32 examples and
       studies that cannot afford every arm at that size run fewer (see conditioning_depth).
full:  longer runs of the quickstart's own size and every arm, for a GPU or a long evening.
"""

from litlab.study import Setting

# Ranking all 128 class names (eval.score_classes) would double a fast run's evaluation time;
# the studies read generation's exact match, and `full` scores classes too.
SMOKE = Setting("quickstart:smoke", {"total_steps": 4, "checkpoint_every": 4, "log_every": 2, "data.limit": 16,
                                     "eval.limit": 3, "eval.score_classes": False}, seeds=(0, 1))
FAST = Setting("quickstart", {
    "decoder.width": 96, "decoder.num_heads": 4, "decoder.mlp_dim": 384,
    "batch_size": 32, "total_steps": 150, "schedule.warmup_steps": 15, "optimizer.lr": 2e-3,
    "data.limit": 2000, "eval.limit": 100, "eval.score_classes": False, "checkpoint_every": 75,
    "log_every": 25}, seeds=(0, 1, 2))
FULL = Setting("quickstart", {"total_steps": 3000, "schedule.warmup_steps": 200, "data.limit": None,
                              "eval.limit": 1000, "checkpoint_every": 500, "log_every": 50}, seeds=(0, 1, 2))


def all_settings(**extra: dict) -> dict:
    """{"smoke": SMOKE, "fast": FAST, "full": FULL}, with `extra[setting]` overrides merged in."""
    out = {"smoke": SMOKE, "fast": FAST, "full": FULL}
    return {k: Setting(s.base, {**s.overrides, **extra.get(k, {})}, s.seeds, s.arms) for k, s in out.items()}
