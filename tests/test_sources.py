import json

import numpy as np
import pytest
from PIL import Image

from litlab.data import sources, tasks


def _write(tmp_path, rows, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(d / "rgb.png")
    Image.fromarray(np.full((16, 16), 80, np.uint8), "L").save(d / "gray.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 0  # fully transparent red -> white after compositing
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    good = (d / "rgb.png").read_bytes()
    (d / "trunc.png").write_bytes(good[: len(good) // 2])
    (d / "junk.jpg").write_bytes(b"not an image at all")
    return d


def test_jsonl_reads_converts_and_resizes(tmp_path, images):
    p = _write(tmp_path, [
        {"image": "img/rgb.png", "prefix": "answer en what?", "suffix": "two", "answers": ["two"] * 10},
        {"image": "img/gray.png", "prefix": "caption", "suffix": "a gray square"},
        {"image": "img/rgba.png", "prefix": "q", "suffix": "a", "references": ["a", "b"]},
    ])
    src = sources.JsonlSource("vqa_jsonl", {"train": p})
    assert src.split_sizes == {"train": 3}
    r0 = src.get("train", 0, resolution=32)
    assert r0["image"].shape == (32, 32, 3) and r0["image"].dtype == np.uint8
    assert r0["references"] == ["two"] * 10 and r0["converted_from"] is None
    r1 = src.get("train", 1, resolution=32)
    assert r1["converted_from"] == "L" and r1["references"] == ["a gray square"]
    assert np.all(r1["image"] == 80)
    r2 = src.get("train", 2, resolution=32)
    assert r2["converted_from"] == "RGBA" and np.all(r2["image"] == 255)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit PNG used to become solid white: PIL's RGB conversion clips at 255."""
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
        out, mode = sources.to_rgb_array(img, 16)
    assert mode == img.mode and out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[..., 0], np.rint(ramp / 257.0), atol=1)
    assert (out[..., 0] == out[..., 2]).all() and out.min() == 0 and out.max() == 255
    flt = Image.fromarray(np.full((8, 8), 0.5, np.float32), "F")
    assert np.all(sources.to_rgb_array(flt, 8)[0] == 128)


def test_jsonl_task_end_to_end_counts_conversions(tmp_path, images):
    p = _write(tmp_path, [
        {"image": "img/rgb.png", "prefix": "what color?", "suffix": "gray", "answers": ["gray"] * 10},
        {"image": "img/rgb.png", "prefix": "how many?", "suffix": "1", "answers": ["1"] * 10},
        {"image": "img/gray.png", "prefix": "what color?", "suffix": "dark", "answers": ["dark"] * 10},
    ])
    tasks.jsonl_task("test_jsonl_vqa", {"test": p}, "vqa", ("vqa_accuracy",), token="vqa")
    ts = tasks.load_task("test_jsonl_vqa", "test", resolution=16, prompting=tasks.Prompting("none"))
    assert len(ts) == 3 and ts.images.shape == (2, 16, 16, 3)  # shared image stored once
    assert ts.image_index.tolist() == [0, 0, 1]
    assert ts.turns[1] == [("how many?", "1")]
    assert ts.stats["converted_to_rgb"] == 1


@pytest.mark.parametrize("row,err,match", [
    ({"image": "img/missing.png", "prefix": "p", "suffix": "s"}, FileNotFoundError, r"data.jsonl:2: image file .*missing.png"),
    ({"image": "img/rgb.png", "suffix": "s"}, ValueError, r"data.jsonl:2: missing key\(s\) \['prefix'\]"),
    ("{not json", ValueError, r"data.jsonl:2: not valid JSON"),
    ("[1, 2]", ValueError, r"data.jsonl:2: each line must be a JSON object"),
])
def test_jsonl_bad_lines_name_file_and_line(tmp_path, images, row, err, match):
    p = _write(tmp_path, [{"image": "img/rgb.png", "prefix": "p", "suffix": "s"}, row])
    with pytest.raises(err, match=match):
        sources.JsonlSource("bad", {"train": p})


@pytest.mark.parametrize("name", ["trunc.png", "junk.jpg"])
def test_corrupt_images_name_file_and_line(tmp_path, images, name):
    p = _write(tmp_path, [{"image": f"img/{name}", "prefix": "p", "suffix": "s"}])
    src = sources.JsonlSource("bad", {"train": p})
    with pytest.raises(ValueError, match=rf"data.jsonl:1: image .*{name} is truncated or corrupt"):
        src.get("train", 0)


def test_unknown_source_split_and_index(tmp_path, images):
    with pytest.raises(KeyError, match="unknown source 'nope'"):
        sources.get_source("nope")
    p = _write(tmp_path, [{"image": "img/rgb.png", "prefix": "p", "suffix": "s"}])
    src = sources.JsonlSource("one", {"train": p})
    with pytest.raises(ValueError, match="no split 'test'"):
        src.get("test", 0)
    with pytest.raises(IndexError, match="has 1 examples"):
        src.get("train", 5)
    with pytest.raises(FileNotFoundError, match="JSONL file for split 'train'"):
        sources.JsonlSource("x", {"train": tmp_path / "absent.jsonl"})


def test_tfds_coco_captions_on_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    src = sources.TfdsSource("coco_mock", "coco_captions", sources.coco_captions_fields,
                             {"train": "train"}, id_key=None)
    with tfds.testing.mock_data(num_examples=4):
        tasks.tfds_task("coco_mock_caption", src, "captioning", ("cider_d",), token="caption")
        ts = tasks.load_task("coco_mock_caption", "train", resolution=24, prompting=tasks.Prompting("token"))
    assert len(ts) == 4 and ts.images.shape == (4, 24, 24, 3) and ts.images.dtype == np.uint8
    assert all(t[0][0] == "caption" for t in ts.turns)
    assert all(ts.turns[i][0][1] == ts.references[i][0] for i in range(4))


def test_tfds_classification_on_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    names = [f"class {i}" for i in range(1000)]
    src = sources.TfdsSource("inet_mock", "imagenet2012", sources.classification_fields(names),
                             {"val": "validation"})
    with tfds.testing.mock_data(num_examples=3):
        rec = src.get("val", 2, resolution=16)
    assert rec["image"].shape == (16, 16, 3)
    assert rec["suffix"] in names and rec["references"] == [rec["suffix"]]


def test_tfds_dataset_not_prepared_is_clear(tmp_path):
    src = sources.TfdsSource("absent", "coco_captions", sources.coco_captions_fields, {"train": "train"},
                             data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not prepared in data_dir=.*tfds build coco_captions"):
        src.split_sizes
