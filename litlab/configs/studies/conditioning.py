"""Conditioning type: how the decoder reads the image tokens (Beyer et al. 2023, section 4).

cross: cross-attention to all image tokens in every block (CapPa-style);
prefix: image tokens prepended, prefix-LM attention (PaliGemma-style);
pooled: cross-attention to one mean-pooled image vector (the bottleneck baseline).
"""

from litlab.configs.studies import _settings
from litlab.study import Study


def get_study(arg=None):
    return Study(
        name="conditioning",
        question="Which conditioning type lets a small decoder use a frozen encoder best?",
        arms={c: {"decoder.conditioning": c} for c in ("cross", "prefix", "pooled")},
        reference="cross",
        settings=_settings.all_settings())
