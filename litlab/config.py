"""Run configs: load `file.py:arg` specs, check keys, apply dotted overrides, fingerprint a run.

One override API serves the CLI (`--config.decoder.conditioning=prefix`), tests, the bench and
the study runner (`{"decoder.conditioning": "prefix"}`), so a misspelt key gets the same error
everywhere. A run's fingerprint covers every key that can change its result; the few keys that
only change logging or checkpoint cadence are left out, so a workdir can be resumed with another
cadence but never with another experiment.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Keys that change when things are logged or saved, never what is learned or measured.
CADENCE_KEYS = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval.batch_size"})
# Keys whose values are free-form (ViT constructor arguments): any sub-key is accepted.
FREE_FORM = ("encoder.model",)


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of a big_vision-style spec: `path/to/file.py[:arg]`, or a name under
    litlab/configs (`quickstart`, `quickstart:smoke`)."""
    path, _, arg = str(spec).partition(":")
    file = Path(path if path.endswith(".py") else CONFIG_DIR / f"{path}.py")
    if not file.is_file() and not file.is_absolute():
        file = CONFIG_DIR.parent.parent / file  # a repository-relative path from another cwd
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} not found (from spec {spec!r}); give a path to a .py "
                                f"file or one of {sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem != '__init__')}.")
    module_spec = importlib.util.spec_from_file_location(f"litlab_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _schema() -> ml_collections.ConfigDict:
    from litlab.configs import quickstart
    return quickstart.get_config()


def flat(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf; free-form sections count as one leaf."""
    out = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, (Mapping, ml_collections.ConfigDict)) and name not in FREE_FORM:
            out.update(flat(v, name + "."))
        else:
            out[name] = v.to_dict() if isinstance(v, ml_collections.ConfigDict) else v
    return out


def _valid_keys() -> set[str]:
    keys = set()
    for k in flat(_schema()):
        parts = k.split(".")
        keys |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return keys


def _unknown(keys) -> ValueError:
    valid = _valid_keys()
    hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, valid, 3, 0.5) or 'none'}?)" for k in keys]
    return ValueError(f"unknown config key(s): {', '.join(hints)}. Valid keys: {sorted(valid)}.")


def _known(key: str, valid: set[str]) -> bool:
    return key in valid or any(key.startswith(f + ".") for f in FREE_FORM)


def check(config) -> None:
    """Unknown keys fail at start, naming the valid keys closest to each."""
    valid = _valid_keys()
    unknown = sorted(k for k in flat(config) if not _known(k, valid))
    if unknown:
        raise _unknown(unknown)


def _parse(text: str, current: Any) -> Any:
    """A command-line string as the type of the value it replaces."""
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return float(value) if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool) else value


def override(config, overrides: Mapping[str, Any], *, from_strings: bool = False) -> ml_collections.ConfigDict:
    """A copy of `config` with dotted keys set: `{"decoder.conditioning": "prefix"}`.

    With `from_strings`, values are command-line text, read as the type of the value they replace.
    """
    config = copy.deepcopy(config)
    config.unlock()
    valid = _valid_keys()
    unknown = sorted(k for k in overrides if not _known(k, valid))
    if unknown:
        raise _unknown(unknown)
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = config
        for p in path:
            if p not in node:
                node[p] = {}
            node = node[p]
        current = node.get(last) if hasattr(node, "get") else None
        if from_strings:
            value = _parse(value, current)
        try:
            node[last] = value
        except TypeError as e:
            raise ValueError(f"config key {key!r}: {value!r} does not fit the current value {current!r} "
                             f"({type(current).__name__}): {e}") from None
    return config


def split_cli_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(other args, {key: text}) from `--config.KEY=V` / `--config.KEY V` in argv."""
    rest, out, i = [], {}, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            key, eq, value = a[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"--config.{key} needs a value: --config.{key}=VALUE.")
                value, i = argv[i + 1], i + 1
            out[key] = value
        else:
            rest.append(a)
        i += 1
    return rest, out


def comparable(config) -> dict[str, Any]:
    """The keys that can change a run's result, flattened. A memory or disk feature cache holds
    the same bfloat16 features, so the two count as one setting. Values are compared as they
    are saved in config.json (a tuple reads back as a list)."""
    d = json.loads(json.dumps({k: v for k, v in flat(config).items() if k not in CADENCE_KEYS}, default=str))
    if d.get("feature_cache") == "disk":
        d["feature_cache"] = "memory"
    return d


def digest(config, extra: str = "") -> str:
    """A short hash of everything that determines a run's result (plus `extra`, e.g. the digest of
    a file the config names): the study runner's run folder."""
    text = json.dumps(comparable(config), sort_keys=True, default=str) + extra
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differences(saved, config) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, new value)} for the result-changing keys that differ."""
    a, b = comparable(saved), comparable(config)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def from_saved(d: dict) -> ml_collections.ConfigDict:
    """A config read back from a workdir's config.json. Runs saved before `data.seed` existed
    rendered their data with `seed`, so that is what their data seed was; runs saved before
    `inputs.image_tokens` existed read the encoder's tokens."""
    d = copy.deepcopy(d)
    d.setdefault("inputs", {}).setdefault("image_tokens", "encoder")
    if "seed" not in d.get("data", {}):
        d.setdefault("data", {})["seed"] = d.get("seed", 0)
    return ml_collections.ConfigDict(d)
