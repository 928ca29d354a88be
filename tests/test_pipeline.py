import numpy as np
import pytest

from litlab.data import mixtures, pipeline
from litlab.data.mixtures import Mixture

LIMIT = 40
MAX_LEN = 40


@pytest.fixture(scope="module")
def data(tok):
    return pipeline.build(mixtures.get_mixture("all_uniform"), "train", tok, max_len=MAX_LEN, limit=LIMIT)


def test_shared_image_table_dedups_scenes(data):
    by_name = {t.name: t for t in data.tasks}
    cap, vqa = by_name["scenes_caption"], by_name["scenes_vqa"]
    assert set(cap.image_row.tolist()) == set(vqa.image_row.tolist())  # same LIMIT scenes images
    assert len(data.images) == len(data.image_keys) == 4 * LIMIT  # objects, scenes, words, text_scenes


def test_dataset_shapes_masks_and_ranges(data, tok):
    batches = list(pipeline.train_batches(data, 16, seed=0, num_steps=3))
    assert len(batches) == 3
    b = batches[0]
    assert b["image"].shape == (16, 64, 64, 3) and b["image"].dtype == np.float32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert b["tokens"].shape == (16, MAX_LEN) and b["tokens"].dtype == np.int32
    for row, plen, mask in zip(b["tokens"], b["prefix_len"], b["loss_mask"]):
        assert row[0] == tok.bos_id and row[plen - 1] == tok.sep_id
        assert not mask[:plen].any()  # the prompt is never in the loss
        on = np.flatnonzero(mask)
        assert row[on[-1]] == tok.eos_id and np.all(row[on[0]:on[-1] + 1] != tok.pad_id)
    # Images match the table rows the batch names.
    np.testing.assert_allclose(b["image"], data.images[b["image_row"]] / 127.5 - 1.0, atol=1e-6)


def test_resume_gives_identical_batches(data):
    full = list(pipeline.train_batches(data, 8, seed=3, num_steps=6, with_images=False))
    tail = list(pipeline.train_batches(data, 8, seed=3, start_step=4, num_steps=2, with_images=False))
    for a, b in zip(full[4:], tail):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert "image" not in full[0]


def test_process_shards_tile_the_global_batch(data):
    whole = next(pipeline.train_batches(data, 8, seed=1, num_steps=1))
    parts = [next(pipeline.train_batches(data, 8, seed=1, num_steps=1, process_index=p, process_count=2)) for p in range(2)]
    for k in whole:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    with pytest.raises(ValueError, match="divisible by the process count"):
        pipeline.train_batches(data, 9, seed=1, process_count=2)


def test_realized_proportions_and_describe(data):
    stats = pipeline.describe(data, 64, seed=0, batches=32)
    assert set(stats["tasks"]) == set(mixtures.EMBEDDED_TASKS)
    for t in stats["tasks"].values():
        assert abs(t["realized"] - 0.2) < 0.01 and t["rate"] == pytest.approx(0.2)


def test_homogeneous_strategy(tok):
    m = Mixture("h", ("objects_cls", "words_ocr"), "uniform", "homogeneous")
    d = pipeline.build(m, "train", tok, max_len=MAX_LEN, limit=20)
    for b in pipeline.train_batches(d, 8, seed=0, num_steps=6, with_images=False):
        assert len(set(b["task_id"].tolist())) == 1


def test_packed_strategy_masks_every_answer(tok):
    m = Mixture("p", ("scenes_vqa",), "uniform", "packed")
    d = pipeline.build(m, "train", tok, max_len=192, limit=10)
    assert d.tasks[0].stats["truncated"] == 0
    t = d.tasks[0]
    n_turns = [len(x) for x in t.turns]
    assert max(n_turns) > 1
    eos_in_loss = ((t.tokens == tok.eos_id) & (t.loss_mask > 0)).sum(1)
    np.testing.assert_array_equal(eos_in_loss, n_turns)


def test_truncation_warns_and_counts(tok):
    m = mixtures.get_mixture("scenes_caption")
    with pytest.warns(UserWarning, match="longer than max_len=10 tokens and were truncated"):
        d = pipeline.build(m, "train", tok, max_len=10, limit=4)
    assert d.tasks[0].stats["truncated"] > 0


def test_prompts_that_fill_max_len_are_dropped_counted_and_named(tok):
    """Such examples trained on nothing (loss mask all zero) and broke decoding at evaluation."""
    from litlab.data import tasks
    ts = tasks.load_task("scenes_vqa", "train", limit=4)
    lengths = [len(tok.encode([t[0][0]])[0]) + 2 for t in ts.turns]  # BOS prompt SEP
    max_len = int(np.median(lengths))
    full = sum(n >= max_len for n in lengths)
    assert 0 < full < len(lengths)
    with pytest.warns(UserWarning, match=r"task 'scenes_vqa' split 'train': \d+ of \d+ examples have prompts that fill max_len"):
        enc = pipeline.encode_task(ts, tok, max_len, np.arange(len(ts.image_keys), dtype=np.int32))
    assert enc.stats["dropped_no_target"] == full and len(enc) == len(ts) - full
    assert (enc.loss_mask.sum(1) > 0).all()
    assert len(enc.turns) == len(enc.references) == len(enc.families) == len(enc.image_row) == len(enc)
    with pytest.raises(ValueError, match=r"task 'scenes_vqa' split 'train': every prompt fills data.max_len=3"):
        pipeline.encode_task(ts, tok, 3, np.arange(len(ts.image_keys), dtype=np.int32))


def test_eval_batches_pad_the_last_batch(data):
    t = data.tasks[0]
    batches = list(pipeline.eval_batches(t, 16))
    assert sum(b["valid"].sum() for b in batches) == len(t)
    assert all(b["tokens"].shape == (16, MAX_LEN) for b in batches)
    # A task smaller than the batch is one batch of its size rounded up to 8, not 256 rows.
    (small,) = list(pipeline.eval_batches(t, 256))
    assert len(small["valid"]) == -(-len(t) // 8) * 8 < 256 and small["valid"].sum() == len(t)


def test_question_places_prompt_memory_none(tok):
    from litlab.data import tasks
    mix = mixtures.get_mixture("scenes_vqa")
    build = lambda place, **k: pipeline.build(mix, "val", tok, max_len=36, limit=3,
                                              prompting=tasks.Prompting(question=place), **k).tasks[0]
    in_prompt, memory, none = build("prompt"), build("memory", question_len=24), build("none")
    questions = [t[0][0].removeprefix("Answer the question: ") for t in in_prompt.turns]
    assert all(q.endswith("?") for q in questions)
    # Memory: the prompt keeps only the task cue, and the question tokens spell the question.
    assert {t[0][0] for t in memory.turns} == {"Answer the question:"}
    assert [tok.decode(q) for q in memory.question_tokens] == questions
    assert memory.stats["questions_cut"] == 0 and memory.references == in_prompt.references
    b = next(pipeline.eval_batches(memory, 4))
    assert b["question_tokens"].shape == (4, 24)
    assert pipeline.Batcher(pipeline.build(mix, "val", tok, max_len=36, limit=3, question_len=24,
                                           prompting=tasks.Prompting(question="memory")), 8, seed=0
                            ).batch(0)["question_tokens"].shape == (8, 24)
    # None: no question anywhere.
    assert {t[0][0] for t in none.turns} == {"Answer the question:"} and none.question_tokens is None
    with pytest.warns(UserWarning, match=r"questions are longer than data.question_len=3"):
        cut = build("memory", question_len=3)
    assert cut.stats["questions_cut"] == len(cut)
    with pytest.raises(ValueError, match="unknown question place 'nowhere'"):
        tasks.Prompting(question="nowhere")
