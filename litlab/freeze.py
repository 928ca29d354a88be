"""Regex-based parameter freezing (big_vision style).

Parameters are named by their `/`-joined path in the params tree, e.g.
`img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel`. A parameter is
frozen when any pattern matches its name (`re.search`, so anchor with `^`).
Frozen parameters get zero updates and carry no optimizer state, so freezing
a large encoder also saves the memory of its Adam moments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import optax

# The encoder's input stem: patch embedding, learned posemb, cls token (whichever exist).
_STEM = r"^img/(embedding|pos_embedding|cls)(/|$)"


def param_names(params):
    """Pytree like `params` whose leaves are the `/`-joined parameter names."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jax.tree_util.keystr(path, simple=True, separator="/"), params)


def frozen_mask(params, patterns: Sequence[str]):
    """Pytree of bools like `params`: True where a pattern matches the name.

    Raises ValueError naming every pattern that matches no parameter, so a
    typo cannot silently leave the encoder trainable.
    """
    compiled = [re.compile(p) for p in patterns]
    names = param_names(params)
    all_names = jax.tree.leaves(names)
    unmatched = [p.pattern for p in compiled if not any(p.search(n) for n in all_names)]
    if unmatched:
        examples = ", ".join(all_names[:5])
        raise ValueError(f"freeze pattern(s) {unmatched} match no parameter; names look like: {examples}")
    return jax.tree.map(lambda n: any(p.search(n) for p in compiled), names)


def frozen_patterns(encoder_trainable: bool | int) -> list[str]:
    """Patterns for how much of the `img/` encoder to train.

    False: freeze the whole encoder. True: train everything. An int N:
    fine-tune from encoder block N on, i.e. freeze the stem (patch embedding,
    posemb, cls token) and blocks 0..N-1; the final encoder_norm trains.
    Needs the per-block (scan=False) encoder layout.
    """
    if encoder_trainable is True:
        return []
    if encoder_trainable is False:
        return ["^img/"]
    if not isinstance(encoder_trainable, int) or encoder_trainable < 0:
        raise ValueError(f"encoder_trainable must be a bool or an int >= 0, got {encoder_trainable!r}")
    patterns = [_STEM]
    if encoder_trainable:
        blocks = "|".join(str(i) for i in range(encoder_trainable))
        patterns.append(f"^img/Transformer/encoderblock_({blocks})/")
    return patterns


def masked_optimizer(tx: optax.GradientTransformation, params, patterns: Sequence[str]):
    """`tx` on trainable params, `optax.set_to_zero()` on params matched by `patterns`.

    Built with optax.multi_transform, so `tx`'s state only covers trainable
    params. `params` may be abstract (e.g. from jax.eval_shape).
    """
    labels = jax.tree.map(lambda f: "frozen" if f else "trainable", frozen_mask(params, patterns))
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
