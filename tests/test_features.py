import jax.numpy as jnp
import numpy as np
import pytest

from litlab import features
from litlab.configs import quickstart
from litlab.data import scenes


def _encoder(calls):
    def encode(images):
        calls.append(images.shape[0])
        x = images.astype(jnp.float32).reshape(images.shape[0], 4, -1)[..., :3]
        return x / 255.0
    return encode


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)


def test_memory_cache_is_bf16_and_exact_rows(images):
    calls = []
    out = features.build(_encoder(calls), images, [f"k{i}" for i in range(10)], (4, 3),
                         encoder_digest="d", where="memory", batch_size=4)
    assert out.dtype == features.BF16 and out.shape == (10, 4, 3)
    want = images.reshape(10, 4, -1)[..., :3] / 255.0
    np.testing.assert_allclose(out.astype(np.float32), want, atol=4e-3)
    assert calls == [4, 4, 4]  # fixed-size batches: the last one is padded, one compilation


def test_disk_cache_is_reused_not_recomputed(images, tmp_path):
    keys = [f"k{i}" for i in range(10)]
    calls = []
    a = features.build(_encoder(calls), images, keys, (4, 3), encoder_digest="d", where="disk",
                       cache_dir=tmp_path, batch_size=4)
    n = len(calls)
    b = features.build(_encoder(calls), images, keys, (4, 3), encoder_digest="d", where="disk",
                       cache_dir=tmp_path, batch_size=4)
    assert len(calls) == n, "a second build over the same images must not encode again"
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    features.build(_encoder(calls), images, keys, (4, 3), encoder_digest="other", where="disk",
                   cache_dir=tmp_path, batch_size=4)
    assert len(calls) > n, "another encoder must not reuse these features"


def test_disk_cache_misses_when_the_pixels_change(tmp_path):
    """Same keys, same encoder, other render seed: the cache must not hand back the old features."""
    from litlab.data import tasks
    a, _ = tasks.read_records("objects", "val", seed=0, resolution=32, limit=6)
    b, _ = tasks.read_records("objects", "val", seed=1, resolution=32, limit=6)
    assert not np.array_equal(a, b)
    keys = [f"objects/val/{i}" for i in range(6)]
    calls = []
    encode = lambda x: jnp.asarray(x, jnp.float32).reshape(x.shape[0], 4, -1)[..., :3]
    counted = lambda x: (calls.append(x.shape[0]), encode(x))[1]
    fa = features.build(counted, a, keys, (4, 3), encoder_digest="d", where="disk", cache_dir=tmp_path)
    fb = features.build(counted, b, keys, (4, 3), encoder_digest="d", where="disk", cache_dir=tmp_path)
    assert len(calls) == 2, "the second render seed must miss the cache"
    assert not np.array_equal(np.asarray(fa), np.asarray(fb))
    assert len(list(tmp_path.glob("features-*.npy"))) == 2


def test_bad_arguments(images):
    with pytest.raises(ValueError, match="10 images but 2 image keys"):
        features.build(_encoder([]), images, ["a", "b"], (4, 3), encoder_digest="d")
    with pytest.raises(ValueError, match="'memory' or 'disk'"):
        features.build(_encoder([]), images, [str(i) for i in range(10)], (4, 3), encoder_digest="d", where="gpu")


def test_quickstart_cache_fits_in_4_gb():
    c = quickstart.get_config()
    m = c.encoder.model
    tokens = (c.data.resolution // m.patch_size[0]) ** 2
    n_images = sum(scenes.SOURCES[s].split_sizes["train"] for s in ("objects", "scenes", "words", "text_scenes"))
    assert features.nbytes((tokens, m.width), n_images) < 4 * 2**30
