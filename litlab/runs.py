"""What training, evaluation, prompting and the study runner share: build a model from a config,
initialize its parameters, reach its frozen image features, and read a trained run back.

Keeping these here (and not in train.py) is what lets evaluation load a run without importing
the trainer, and lets the trainer take evaluators from its caller, as big_vision does.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from litlab import checkpoints, config as config_lib, features
from litlab.data import mixtures, pipeline, tasks
from litlab.data.tokenizer import Tokenizer
from litlab.models import lit_decoder, vit

ROOT = Path(__file__).resolve().parents[1]
QUESTION_MODES = ("prompt", "memory", "none")


@dataclasses.dataclass
class Run:
    """A trained (or restored) run: what evaluators, prompting and notebooks need."""
    config: ml_collections.ConfigDict
    workdir: Path
    model: lit_decoder.Model
    params: dict
    tokenizer: Tokenizer
    step: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    steps_per_s: float = 0.0
    wall_s: float = 0.0
    # Seconds per phase: setup (model, params, data), features, first_step (compile + one step),
    # train (the steps after it), eval: what a study spends besides training.
    timings: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)  # {evaluator name: {task: {metric: value}}}

    @property
    def trainable_params(self) -> int:
        """Parameters the run trained (the decoder, plus any unfrozen encoder blocks)."""
        from litlab import freeze
        frozen = freeze.frozen_mask(self.params, freeze.frozen_patterns(self.config.encoder.trainable)
                                    + list(self.config.freeze))
        return int(sum(np.size(p) for p, f in zip(jax.tree.leaves(self.params), jax.tree.leaves(frozen)) if not f))


def resolve_path(path: str) -> Path:
    """A config path as given, or relative to the repository (shipped assets under data/)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    if p.parts and p.parts[0] == "data":
        from litlab import assets
        return assets.asset_path(*p.parts[1:])
    return ROOT / p


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (an encoder checkpoint), or "" when it does not exist yet."""
    if not Path(path).is_file():
        return ""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prompting(config) -> tasks.Prompting:
    return tasks.Prompting(config.prompt_style, config.prompt_shared, config.inputs.question)


def build_model(config, vocab_size: int) -> lit_decoder.Model:
    dtype = {"float32": "float32", "bfloat16": "bfloat16"}.get(config.matmul_precision)
    if dtype is None:
        raise ValueError(f"matmul_precision must be 'float32' or 'bfloat16', got {config.matmul_precision!r}.")
    if config.inputs.question not in QUESTION_MODES:
        raise ValueError(f"inputs.question must be one of {QUESTION_MODES}, got {config.inputs.question!r}.")
    question_len = config.data.question_len if config.inputs.question == "memory" else 0
    r = config.data.resolution
    return lit_decoder.Model(
        encoder_cfg={**dict(config.encoder.model), "dtype_mm": dtype},
        decoder_cfg={**dict(config.decoder), "vocab_size": vocab_size, "max_len": config.data.max_len,
                     "dtype_mm": dtype, "question_len": question_len, "image_input": bool(config.inputs.image)},
        image_size=(r, r), encoder_trainable=config.encoder.trainable)


def _model_inputs(model: lit_decoder.Model, config) -> dict:
    L = config.data.max_len
    n, d = model.token_shape()
    extra = {}
    if model.decoder_cfg.get("question_len"):
        extra["question_tokens"] = jnp.zeros((1, model.decoder_cfg["question_len"]), jnp.int32)
    return dict(tokens=jnp.zeros((1, L - 1), jnp.int32), prefix_len=jnp.ones((1,), jnp.int32),
                image_tokens=jnp.zeros((1, n, d)), **extra)


@functools.lru_cache(maxsize=16)
def _init_fn(module: lit_decoder.ByConfig):
    """module.init(rng, **inputs), jitted once per module config: a study's runs share its trace."""
    return jax.jit(lambda rng, inputs: module.module.init(rng, **inputs))


def init_params(model: lit_decoder.Model, config) -> dict:
    """Decoder params from init; encoder params from the checkpoint (only their shapes are
    traced, never a random init that would be thrown away) or a random init without one."""
    r = config.data.resolution
    rng = jax.random.PRNGKey(config.seed)
    params = dict(_init_fn(lit_decoder.ByConfig(model))(rng, _model_inputs(model, config))["params"])
    init_encoder = _init_fn(lit_decoder.ByConfig(vit.Model(**model.encoder_cfg)))
    images = jnp.zeros((1, r, r, 3))
    if not config.encoder.path:
        params["img"] = init_encoder(jax.random.PRNGKey(config.encoder.seed), {"image": images})["params"]
        return params
    path = resolve_path(config.encoder.path)
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} (config.encoder.path) not found; rebuild "
                                "it with `python -m litlab.pretrain` or point to a big_vision ViT .npz.")
    try:
        params["img"] = vit.load(init_encoder.eval_shape(rng, {"image": images})["params"], str(path),
                                 dict(config.encoder.model))
    except ValueError as e:
        raise ValueError(f"config.encoder.path: {e}") from None
    return params


def encoder_fn(model: lit_decoder.Model, params: dict):
    """Jitted uint8 images -> image tokens, for the feature cache."""
    @jax.jit
    def encode(images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        return model.apply({"params": params}, x, method=lit_decoder.Model.encode)
    return encode


def image_tokens(config, model, params, images: np.ndarray, image_keys: list[str], *,
                 desc: str = "cache features") -> np.ndarray:
    """The encoder's tokens for `images`; with inputs.image_tokens="oracle", tokens read off the
    renderer's annotations instead (`litlab.oracle_tokens`), and with "encoder+oracle", the
    encoder's tokens with their first features replaced by the oracle's. A frozen encoder with
    `feature_cache="disk"` reads them from (or adds them to) the shared on-disk cache, so every run
    and every evaluation over the same pixels with the same encoder encodes them once; otherwise
    they are encoded in memory."""
    mode = config.inputs.image_tokens
    if mode != "encoder":
        from litlab import oracle_tokens
        oracle = oracle_tokens.tokens(image_keys, model.token_shape(), seed=config.data.seed,
                                      resolution=config.data.resolution).astype(features.BF16)
        if mode == "oracle":
            return oracle
    where = "disk" if config.feature_cache == "disk" and config.encoder.trainable is False else "memory"
    tokens = features.build(encoder_fn(model, params), images, image_keys, model.token_shape(),
                            encoder_digest=features.params_digest(params["img"]), where=where,
                            cache_dir=tasks.cache_dir() / "features", batch_size=config.eval.batch_size, desc=desc)
    return tokens if mode == "encoder" else oracle_tokens.overlay(tokens, oracle)


# The last few splits built, shared read-only: a study's consecutive runs (the seeds of an arm)
# ask for the same train, test and compositional data, which takes seconds per split to build.
_DATA_MEMO: collections.OrderedDict = collections.OrderedDict()
_DATA_MEMO_SIZE = 3


def load_data(config, tok: Tokenizer, split: str = "train", *, task_names=None, limit=None) -> pipeline.MixtureData:
    """A split of the config's mixture (or of `task_names`). Its content is set by `data.seed`
    alone, so runs that differ in `seed` see the same images and questions. Its arrays are
    read-only: the same object is handed to every run in this process that asks for it."""
    mixture = mixtures.get_mixture(config.mixture)
    if task_names is not None:
        mixture = mixtures.Mixture(f"eval_{split}", tuple(task_names), "uniform", "mixed")
    kwargs = dict(max_len=config.data.max_len, prompting=prompting(config), seed=config.data.seed,
                  resolution=config.data.resolution, limit=config.data.limit if limit is None else limit,
                  question_len=config.data.question_len)
    key = (repr(mixture), split, str(Path(tok.path).resolve()), repr(sorted(kwargs.items())))
    if key in _DATA_MEMO:
        _DATA_MEMO.move_to_end(key)
        return _DATA_MEMO[key]
    data = pipeline.build(mixture, split, tok, **kwargs)
    for arr in [data.images] + [a for t in data.tasks for a in vars(t).values() if isinstance(a, np.ndarray)]:
        arr.flags.writeable = False
    _DATA_MEMO[key] = data
    while len(_DATA_MEMO) > _DATA_MEMO_SIZE:
        _DATA_MEMO.popitem(last=False)
    return data


def read_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir} a litlab training workdir?")
    try:
        return config_lib.from_saved(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it should be the config a run saved.") from None


def load(workdir: str | Path) -> Run:
    """The latest checkpoint of a training workdir, parameters only (no optimizer state)."""
    workdir = Path(workdir)
    config = read_config(workdir)
    tok = Tokenizer()
    model = build_model(config, tok.vocab_size)
    abstract = jax.eval_shape(lambda: init_params(model, config))
    ckpt = checkpoints.Checkpointer(workdir, keep=max(int(config.keep_checkpoints), 1))
    params, step = ckpt.restore_params(abstract)
    ckpt.close()
    if params is None:
        raise FileNotFoundError(f"no readable checkpoint in {workdir / 'checkpoints'}; train first.")
    return Run(config, workdir, model, params, tok, step=step)
