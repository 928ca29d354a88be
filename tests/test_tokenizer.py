import numpy as np
import pytest

from litlab.data import tokenizer as tk


@pytest.fixture(scope="module")
def small_tok(tmp_path_factory):
    words = ["red", "blue", "green", "circle", "square", "triangle", "left", "right", "of", "a", "the",
             "how", "many", "what", "color", "is", "there", "yes", "no", "one", "two", "three"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(2000)]
    path = tk.train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=60)
    return tk.Tokenizer(path)


def test_special_ids_defined_once(small_tok):
    assert (small_tok.pad_id, small_tok.eos_id, small_tok.bos_id) == (tk.PAD_ID, tk.EOS_ID, tk.BOS_ID)
    assert small_tok.sp.id_to_piece(small_tok.sep_id) == tk.SEP_PIECE


def test_round_trip(small_tok):
    for text in ["a red circle left of the blue square", "how many triangle", "yes"]:
        ids = small_tok.encode([text])[0]
        assert small_tok.decode(ids) == text
        assert small_tok.decode(ids + [small_tok.eos_id, 5, 6]) == text  # stops at EOS


def test_training_is_deterministic(small_tok, tmp_path):
    texts = ["a red circle", "two blue squares", "yes no"] * 300
    a = tk.train_tokenizer(texts, tmp_path / "a.model", vocab_size=30).read_bytes()
    b = tk.train_tokenizer(texts, tmp_path / "b.model", vocab_size=30).read_bytes()
    assert a == b


def test_layout_and_loss_mask(small_tok):
    toks, plen, mask, ntr = tk.encode_examples(small_tok, [[("what color", "red")], [("", "two")]], 16)
    p, t = small_tok.encode(["what color"])[0], small_tok.encode(["red"])[0]
    expect = [tk.BOS_ID] + p + [small_tok.sep_id] + t + [tk.EOS_ID]
    assert toks[0, :len(expect)].tolist() == expect and np.all(toks[0, len(expect):] == tk.PAD_ID)
    assert plen[0] == len(p) + 2 and plen[1] == 2
    assert mask[0].tolist() == [0] * (len(p) + 2) + [1] * (len(t) + 1) + [0] * (16 - len(expect))
    assert ntr == 0


def test_packed_turns_mask_every_answer(small_tok):
    toks, plen, mask, _ = tk.encode_examples(small_tok, [[("how many", "two"), ("what color", "red")]], 24)
    seq = toks[0].tolist()
    assert seq.count(small_tok.sep_id) == 2 and seq.count(tk.EOS_ID) == 2
    decoded_targets = small_tok.decode([i for i, m in zip(seq, mask[0]) if m and i != tk.EOS_ID])
    assert decoded_targets.split() == ["two", "red"]
    assert plen[0] == len(small_tok.encode(["how many"])[0]) + 2


def test_truncation_is_counted(small_tok):
    long = " ".join(["red circle"] * 20)
    toks, _, mask, ntr = tk.encode_examples(small_tok, [[("what", long)], [("what", "red")]], 8)
    assert ntr == 1 and toks.shape == (2, 8) and mask[0, -1] == 1


def test_missing_model_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="SentencePiece model .*nope.model not found"):
        tk.Tokenizer(tmp_path / "nope.model")


def test_shipped_tokenizer_round_trips_benchmark_text(tok):
    assert tok.vocab_size > 100
    for text in ["a large red triangle", "what word is on the blue square?", "zebra", "Describe the image."]:
        assert tok.decode(tok.encode([text])[0]) == text
