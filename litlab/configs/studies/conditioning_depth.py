"""Decoder depth for one conditioning type (the best one from the `conditioning` study).

    python -m litlab.study run conditioning_depth:conditioning=prefix

The reference is depth 2, the paper's choice for the LiT-decoder. `fast` runs depths 1, 2 and 4:
a 6-layer prefix decoder alone (0.65 s/step on 2 cores, x 3 seeds) would take more than the
whole notebook's 15 minutes. `smoke` and `full` run all four.
"""

import dataclasses

from litlab.configs.studies import _settings
from litlab.study import Study

DEPTHS = (1, 2, 4, 6)
FAST_DEPTHS = (1, 2, 4)


def get_study(arg=None):
    key, _, conditioning = (arg or "conditioning=cross").partition("=")
    if key != "conditioning" or conditioning not in ("cross", "prefix", "pooled"):
        raise ValueError(f"conditioning_depth takes 'conditioning=cross|prefix|pooled', got {arg!r}.")
    settings = _settings.all_settings()
    settings["fast"] = dataclasses.replace(settings["fast"], arms=tuple(f"depth{d}" for d in FAST_DEPTHS))
    return Study(
        name=f"conditioning_depth_{conditioning}",
        question=f"How deep must a {conditioning}-conditioned decoder be?",
        arms={f"depth{d}": {"decoder.conditioning": conditioning, "decoder.depth": d} for d in DEPTHS},
        reference="depth2",
        settings=settings)
