import numpy as np
import pytest

from litlab.data import mixtures
from litlab.data.mixtures import Mixture, Schedule, resolve_rates

SIZES = {"a": 1000, "b": 300, "c": 50}


def test_rates_uniform_size_temperature_explicit():
    np.testing.assert_allclose(resolve_rates(Mixture("m", ("a", "b", "c"), "uniform"), SIZES), [1 / 3] * 3)
    np.testing.assert_allclose(resolve_rates(Mixture("m", ("a", "b", "c"), "size"), SIZES), [1000 / 1350, 300 / 1350, 50 / 1350])
    t = resolve_rates(Mixture("m", ("a", "b", "c"), {"temperature": 2.0}), SIZES)
    w = np.sqrt([1000, 300, 50])
    np.testing.assert_allclose(t, w / w.sum())
    np.testing.assert_allclose(resolve_rates(Mixture("m", ("a", "b", "c"), {"a": 3, "b": 1}), SIZES), [0.75, 0.25, 0])


@pytest.mark.parametrize("rates,match", [
    ({"a": 0, "b": 0, "c": 0}, "sum to zero"),
    ({"a": -1, "b": 2}, "negative"),
    ({"zz": 1}, "not in the mixture"),
    ({"temperature": 0}, "temperature"),
    ("bogus", "rates must be"),
])
def test_bad_rates_raise_clear_errors(rates, match):
    with pytest.raises(ValueError, match=match):
        resolve_rates(Mixture("m", ("a", "b", "c"), rates), SIZES)


def test_unknown_strategy_and_empty():
    with pytest.raises(ValueError, match="unknown strategy"):
        Mixture("m", ("a",), "uniform", "zigzag")
    with pytest.raises(ValueError, match="no tasks"):
        Mixture("m", (), "uniform")


def _counts(sched, steps, n_tasks):
    c = np.zeros(n_tasks)
    for s in range(steps):
        t, _ = sched.batch(s)
        c += np.bincount(t, minlength=n_tasks)
    return c / c.sum()


@pytest.mark.parametrize("homogeneous", [False, True])
def test_realized_proportions_match_rates(homogeneous):
    rates = np.array([0.5, 0.3, 0.2])
    sched = Schedule(rates, [1000, 300, 50], 64, homogeneous=homogeneous, seed=1)
    steps = 1024 if homogeneous else 64  # whole blocks: exact; partial blocks: within one block
    np.testing.assert_allclose(_counts(sched, steps, 3), rates, atol=1e-3)
    # A partial block stays within sampling error of the rates.
    p = _counts(Schedule(rates, [1000, 300, 50], 64, homogeneous=homogeneous, seed=2), 100, 3)
    n = 100 * (1 if homogeneous else 64)
    assert np.all(np.abs(p - rates) < 4 * np.sqrt(rates * (1 - rates) / n) + 1e-9)


def test_homogeneous_batches_hold_one_task():
    sched = Schedule(np.array([0.5, 0.5]), [100, 100], 16, homogeneous=True, seed=0)
    for s in range(20):
        t, idx = sched.batch(s)
        assert len(set(t.tolist())) == 1 and len(idx) == 16


def test_stateless_resume_and_determinism():
    mk = lambda: Schedule(np.array([0.6, 0.4]), [37, 500], 32, homogeneous=False, seed=7)
    a, b = mk(), mk()
    full = [a.batch(s) for s in range(80)]
    resumed = [b.batch(s) for s in range(50, 80)]  # fresh schedule jumps straight to step 50
    for (t1, i1), (t2, i2) in zip(full[50:], resumed):
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(i1, i2)
    other = Schedule(np.array([0.6, 0.4]), [37, 500], 32, homogeneous=False, seed=8).batch(0)
    assert not np.array_equal(other[1], full[0][1])


def test_each_epoch_visits_every_example_once():
    sched = Schedule(np.array([1.0]), [37], 37, homogeneous=False, seed=3)
    for s in range(3):
        _, idx = sched.batch(s)
        assert sorted(idx.tolist()) == list(range(37))


def test_registry():
    assert "all_uniform" in mixtures.mixture_names()
    with pytest.raises(KeyError, match="unknown mixture"):
        mixtures.get_mixture("nope")


def test_plus_joins_tasks_at_uniform_rates():
    m = mixtures.get_mixture("scenes_vqa_existence+scenes_caption")
    assert m.tasks == ("scenes_vqa_existence", "scenes_caption") and m.rates == "uniform"
    assert m.strategy == "mixed"
    with pytest.raises(KeyError, match=r"unknown: \['nope'\]"):
        mixtures.get_mixture("scenes_caption+nope")
    with pytest.raises(KeyError, match="without spaces"):
        mixtures.get_mixture("scenes_caption + words_ocr")
    with pytest.raises(KeyError, match="registered mixtures cannot be joined"):
        mixtures.get_mixture("all_uniform+words_ocr")
    with pytest.raises(KeyError, match="a task repeats"):
        mixtures.get_mixture("scenes_caption+scenes_caption")
    with pytest.raises(KeyError, match="scenes_vqa_count is a part of scenes_vqa, so its examples would be trained"):
        mixtures.get_mixture("scenes_vqa+scenes_vqa_count")
    families = mixtures.get_mixture("scenes_vqa_count+scenes_vqa_existence")  # disjoint parts of one task
    assert families.tasks == ("scenes_vqa_count", "scenes_vqa_existence")
