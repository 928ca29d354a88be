"""The bad-input table: what a careless user types, and the one clear message each gets.

Every case asserts that the message names the culprit (the key, the file and line, the value),
so a user can fix it without reading a traceback. Nothing here trains a model.
"""

import json

import numpy as np
import pytest
from PIL import Image

from litlab import config as config_lib, evaluate, metrics, prompting, runs, study, train
from litlab.configs import quickstart
from litlab.data import sources


def smoke(**overrides):
    return config_lib.override(quickstart.get_config("smoke"), overrides)


def validate(**overrides):
    return lambda tmp: train.validate(smoke(**overrides))


def encoder_file(make):
    """init_params with config.encoder.path pointing at a file `make(tmp)` wrote."""
    def case(tmp):
        c = smoke()
        c.encoder.path = str(make(tmp))
        c.encoder.model = quickstart.get_config().encoder.model
        runs.init_params(runs.build_model(c, 1000), c)
    return case


def _npz_truncated(tmp):
    from litlab.models import vit
    import jax
    model = vit.Model(width=8, depth=1, mlp_dim=16, num_heads=2, patch_size=(16, 16))
    vit.save_params(tmp / "full.npz", jax.device_get(model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))["params"]))
    data = (tmp / "full.npz").read_bytes()
    (tmp / "cut.npz").write_bytes(data[:len(data) // 2])
    return tmp / "cut.npz"


def _write(name, text):
    def make(tmp):
        (tmp / name).write_text(text)
        return tmp / name
    return make


def jsonl(lines, image=True):
    """A JsonlSource over `lines` (dicts or raw strings) beside a real image file."""
    def case(tmp):
        if image:
            Image.new("RGB", (8, 8)).save(tmp / "a.png")
        (tmp / "d.jsonl").write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
        sources.JsonlSource("bad", {"train": tmp / "d.jsonl"})
    return case


GOOD = {"image": "a.png", "prefix": "q", "suffix": "a"}


def prompt(**kw):
    def case(tmp):
        c = smoke()
        model = runs.build_model(c, 1000)
        from litlab.data.tokenizer import Tokenizer
        images = np.zeros((1, 64, 64, 3), np.uint8)
        prompting.answer(model, runs.init_params(model, c), Tokenizer(), images, [kw.pop("text", "what color?")], **kw)
    return case


CASES = [
    # Counts, each named by its key (issue 11, item 1 and 3, 10).
    ("total_steps negative", validate(total_steps=-5), ValueError, r"'total_steps' must be a positive integer, got -5"),
    ("total_steps zero", validate(total_steps=0), ValueError, r"'total_steps'"),
    ("batch_size zero", validate(batch_size=0), ValueError, r"'batch_size'"),
    ("eval.limit zero", validate(**{"eval.limit": 0}), ValueError, r"'eval.limit'"),
    ("max_len zero", validate(**{"data.max_len": 0}), ValueError, r"'data.max_len'"),
    ("depth zero", validate(**{"decoder.depth": 0}), ValueError, r"'decoder.depth'"),
    ("heads negative", validate(**{"decoder.num_heads": -1}), ValueError, r"'decoder.num_heads'"),
    ("width zero", validate(**{"decoder.width": 0}), ValueError, r"'decoder.width'"),
    ("keep_checkpoints zero", validate(keep_checkpoints=0), ValueError, r"'keep_checkpoints'"),
    ("log_every zero", validate(log_every=0), ValueError, r"'log_every'"),
    ("eval_every negative", validate(eval_every=-1), ValueError, r"'eval_every' must be 0 .* got -1"),
    ("eval_every a bool", validate(eval_every=True), ValueError, r"'eval_every' must be 0 .* got True"),
    ("checkpoint_every zero", validate(checkpoint_every=0), ValueError, r"'checkpoint_every'"),
    ("eval.batch_size zero", validate(**{"eval.batch_size": 0}), ValueError, r"'eval.batch_size'"),
    ("question_len zero with memory", validate(**{"inputs.question": "memory", "data.question_len": 0}), ValueError,
     r"'data.question_len'"),
    # Values (items 2 and 4, and the weak messages).
    ("resolution not a patch multiple", validate(**{"data.resolution": 60}), ValueError,
     r"'data.resolution' \(60\) is not a multiple of the encoder's patch size \(16, 16\)"),
    ("batch not divisible by devices", validate(batch_size=6, **{"mesh.data": 4}), ValueError,
     r"'batch_size' \(6\) must be divisible by the 4 devices of the mesh"),
    ("sharding strategy", validate(sharding_strategy="foo"), ValueError, r"unknown sharding_strategy 'foo'"),
    ("eval.decode typo", validate(**{"eval.decode": "gredy"}), ValueError, r"unknown decoding method 'gredy'"),
    ("beam size zero", validate(**{"eval.decode": "beam:0"}), ValueError, r"beam size must be >= 1"),
    ("prompt style", validate(prompt_style="verbose"), ValueError, r"unknown prompt style 'verbose'"),
    ("question place", validate(**{"inputs.question": "nowhere"}), ValueError, r"unknown question place 'nowhere'"),
    ("mixture", validate(mixture="nope"), KeyError, r"unknown mixture 'nope'"),
    ("matmul precision", validate(matmul_precision="fp8"), ValueError, r"'matmul_precision' must be one of"),
    ("feature cache", validate(feature_cache="gpu"), ValueError, r"'feature_cache' must be one of"),
    ("optimizer", validate(**{"optimizer.name": "sgd"}), ValueError, r"'optimizer.name' must be one of"),
    ("schedule", validate(**{"schedule.name": "linear"}), ValueError, r"'schedule.name' must be one of"),
    ("conditioning", validate(**{"decoder.conditioning": "film"}), ValueError, r"'decoder.conditioning' must be one of"),
    ("image posemb", validate(**{"decoder.image_posemb": "rope"}), ValueError, r"'decoder.image_posemb' must be one of"),
    ("misspelt key", lambda tmp: smoke(**{"optimizer.lerning_rate": 1.0}), ValueError,
     r"unknown config key\(s\): 'optimizer.lerning_rate' \(did you mean \[.*'optimizer.lr'"),
    ("cli value of the wrong type", lambda tmp: config_lib.override(smoke(), {"total_steps": "many"}, from_strings=True),
     ValueError, r"config key 'total_steps': 'many'"),
    ("cli key without value", lambda tmp: config_lib.split_cli_overrides(["--config.total_steps"]), ValueError,
     r"--config.total_steps needs a value"),
    ("config file", lambda tmp: config_lib.load("nonexistent.py:smoke"), FileNotFoundError, r"config file 'nonexistent.py'"),
    # Encoder checkpoints (item 14): the path, what was expected, what to do.
    ("encoder missing", encoder_file(lambda tmp: tmp / "none.npz"), FileNotFoundError, r"none.npz \(config.encoder.path\) not found"),
    ("encoder .npy", encoder_file(lambda tmp: (np.save(tmp / "a.npy", np.zeros(3)), tmp / "a.npy")[1]), ValueError,
     r"config.encoder.path: .*a.npy is not a big_vision .npz checkpoint \(a single .npy array\)"),
    ("encoder text file", encoder_file(_write("notes.npz", "hello")), ValueError,
     r"config.encoder.path: .*notes.npz is not a big_vision .npz checkpoint \(not a zip archive\)"),
    ("encoder empty file", encoder_file(_write("empty.npz", "")), ValueError, r"empty.npz is not a big_vision .npz checkpoint \(empty\)"),
    ("encoder truncated", encoder_file(_npz_truncated), ValueError, r"config.encoder.path: .*cut.npz is a truncated or corrupt"),
    ("encoder directory", encoder_file(lambda tmp: tmp), ValueError, r"is a directory, not a checkpoint"),
    # JSONL exports (items 8 and 16), each naming file:line.
    ("jsonl null prefix", jsonl([{**GOOD, "prefix": None}]), ValueError, r"d.jsonl:1: 'prefix' must be a string, got null"),
    ("jsonl null suffix", jsonl([GOOD, {**GOOD, "suffix": None}]), ValueError, r"d.jsonl:2: 'suffix' must be a string"),
    ("jsonl numeric answers", jsonl([{**GOOD, "answers": [1, 2]}]), ValueError, r"d.jsonl:1: 'answers' must be a list of strings"),
    ("jsonl empty file", jsonl([]), ValueError, r"split 'train' has no examples: .*d.jsonl"),
    ("jsonl image is a directory", jsonl([{**GOOD, "image": "."}]), ValueError, r"d.jsonl:1: image '.' is a directory"),
    ("jsonl missing image", jsonl([{**GOOD, "image": "b.png"}]), FileNotFoundError, r"d.jsonl:1: image file .*b.png does not exist"),
    ("jsonl broken line", jsonl([GOOD, "{not json"]), ValueError, r"d.jsonl:2: not valid JSON"),
    ("jsonl missing key", jsonl([{"image": "a.png", "prefix": "q"}]), ValueError, r"d.jsonl:1: missing key\(s\) \['suffix'\]"),
    # The evaluate CLI (item 16): exit 2 with one line (checked in test_cli_exit_codes below).
    ("evaluate limit zero", lambda tmp: evaluate.Evaluator("test", limit=0), ValueError, r"eval limit must be a positive number .* got 0"),
    ("evaluate limit negative", lambda tmp: evaluate.Evaluator("test", limit=-1), ValueError, r"got -1"),
    ("evaluate split", lambda tmp: evaluate.Evaluator("train"), ValueError, r"unknown eval split 'train'"),
    ("evaluate not a workdir", lambda tmp: runs.load(tmp), FileNotFoundError, r"config.json not found"),
    # Prompting (weak messages).
    ("max_new_tokens zero", prompt(max_new_tokens=0), ValueError, r"max_new_tokens must be a positive integer .* got 0"),
    ("non-ascii prompt", prompt(text="¿qué color?"), ValueError, r"characters the tokenizer does not know \('.*¿.*'\)"),
    ("questions to a prompt model", prompt(questions=["what?"]), ValueError, r"reads the question in its prompt"),
    # Studies and metrics.
    ("unknown study", lambda tmp: study.load("nope"), FileNotFoundError, r"no study 'nope'"),
    ("study setting", lambda tmp: study.load("conditioning").configs("medium"), ValueError, r"unknown setting 'medium'"),
    ("study depth argument", lambda tmp: study.load("conditioning_depth:conditioning=fancy"), ValueError,
     r"conditioning=cross\|prefix\|pooled', got 'conditioning=fancy'"),
    ("unknown metric", lambda tmp: metrics.compute(["bleu"], ["a"], [["a"]]), ValueError, r"unknown metric 'bleu'"),
]


@pytest.mark.parametrize("name,case,error,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_a_message_naming_the_culprit(name, case, error, match, tmp_path):
    with pytest.raises(error, match=match):
        case(tmp_path)


def test_the_table_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv,match", [
    (["--limit", "0"], "eval limit must be a positive number"),
    (["--limit", "-1"], "got -1"),
    (["--decode", "beam:0"], "beam size must be >= 1"),
    ([], "config.json not found"),
])
def test_evaluate_cli_says_one_line_and_exits_2(argv, match, tmp_path, capsys):
    assert evaluate.main(["--workdir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_train_cli_says_one_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--config", "litlab/configs/quickstart.py:smoke", "--workdir", str(tmp_path),
                    "--config.optimizer.lerning_rate=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown config key(s): 'optimizer.lerning_rate'") and len(err.splitlines()) == 1
    assert not (tmp_path / "config.json").exists()
