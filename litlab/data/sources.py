"""Where images and raw annotations come from: the embedded benchmark, JSONL exports, TFDS.

Every source answers the same two questions, so tasks never care which kind they read:
`split_sizes` (examples per split) and `get(split, index, *, seed, resolution)` -> a record with
an RGB uint8 `image` of shape [resolution, resolution, 3], an `image_key` that names the image
(examples sharing an image share the key, so its features are computed once), and the source's
annotation fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from litlab.data import scenes

_REGISTRY: dict[str, object] = {}
JSONL_REQUIRED_KEYS = ("image", "prefix", "suffix")


def register_source(source) -> None:
    """Adds a user source (JSONL, TFDS or anything with split_sizes/get) under its name."""
    _REGISTRY[source.name] = source


def get_source(name: str):
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in scenes.SOURCES:
        return scenes.SOURCES[name]
    known = sorted(set(_REGISTRY) | set(scenes.SOURCES))
    raise KeyError(f"unknown source {name!r}; known sources: {known}. Register JSONL/TFDS data "
                   "with litlab.data.sources.register_source(...).")


def check_split(source, split: str, index: int) -> None:
    sizes = source.split_sizes
    if split not in sizes:
        raise ValueError(f"source {source.name!r} has no split {split!r}; its splits are "
                         f"{sorted(sizes)}.")
    if not 0 <= index < sizes[split]:
        raise IndexError(f"source {source.name!r} split {split!r} has {sizes[split]} examples; "
                         f"index {index} is out of range.")


def to_rgb_array(img: Image.Image, resolution: int) -> tuple[np.ndarray, str | None]:
    """RGB uint8 [resolution, resolution, 3]; also returns the original mode when it had to be
    converted (grayscale, RGBA, palette, CMYK...), so callers can count conversions."""
    converted = None
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # 16-bit and float data: PIL's RGB conversion clips at 255 (a 16-bit image turns white).
        # Stated rule: integer data are 16-bit, scaled by 255/65535; float data in [0, 1] are
        # scaled by 255, larger float data are taken as 0..255. Then gray becomes RGB.
        converted = img.mode
        x = np.asarray(img, np.float64)
        x = x * (255.0 / 65535.0) if img.mode != "F" else (x * 255.0 if x.max(initial=0.0) <= 1.0 else x)
        img = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8), "L")
    if img.mode != "RGB":
        converted = converted or img.mode
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite on white rather than dropping alpha, which would expose arbitrary colors.
            rgba = img.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, rgba)
        img = img.convert("RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, np.uint8), converted


class JsonlSource:
    """Lines of `{"image": path, "prefix": ..., "suffix": ..., "answers"|"references": [...]}`.

    This is the layout big_vision's PaliGemma transfers export for VQAv2, TextVQA, OCR-VQA and
    captioning; image paths are relative to the JSONL file (or `image_root`). Lines are checked
    when the source is opened, so a missing key or file is reported with its line number before
    any training starts, never deep inside tf.data.
    """

    def __init__(self, name: str, files: Mapping[str, str | Path], image_root: str | Path | None = None):
        self.name = name
        self._lines: dict[str, list[dict]] = {}
        self._where: dict[str, list[str]] = {}
        for split, path in files.items():
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"source {name!r}: JSONL file for split {split!r} not found: {path}")
            root = Path(image_root) if image_root else path.parent
            rows, where = [], []
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                loc = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{loc}: not valid JSON ({e.msg}); fix or remove the line.") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{loc}: each line must be a JSON object with keys {JSONL_REQUIRED_KEYS}.")
                missing = [k for k in JSONL_REQUIRED_KEYS if k not in row]
                if missing:
                    raise ValueError(f"{loc}: missing key(s) {missing}; every line needs "
                                     f"{JSONL_REQUIRED_KEYS} (+ optional 'answers' or 'references').")
                for key in JSONL_REQUIRED_KEYS:
                    if not isinstance(row[key], str):
                        raise ValueError(f"{loc}: {key!r} must be a string, got {json.dumps(row[key])}; "
                                         "write \"\" for an empty text.")
                for key in ("answers", "references"):
                    refs = row.get(key)
                    if refs is not None and not (isinstance(refs, str) or (
                            isinstance(refs, list) and all(isinstance(r, str) for r in refs))):
                        raise ValueError(f"{loc}: {key!r} must be a list of strings, got {json.dumps(refs)}.")
                image = root / row["image"]
                if image.is_dir():
                    raise ValueError(f"{loc}: image {row['image']!r} is a directory ({image}), not an image file.")
                if not image.is_file():
                    raise FileNotFoundError(f"{loc}: image file {image} does not exist; fix the path "
                                            "or pass image_root=... to JsonlSource.")
                row["image"] = str(image)
                rows.append(row)
                where.append(loc)
            if not rows:
                raise ValueError(f"source {name!r}: JSONL file for split {split!r} has no examples: {path}; "
                                 "give it one JSON object per line.")
            self._lines[split], self._where[split] = rows, where

    @property
    def split_sizes(self) -> dict[str, int]:
        return {s: len(rows) for s, rows in self._lines.items()}

    def get(self, split: str, index: int, *, seed: int = 0, resolution: int = 64) -> dict:
        del seed  # files are fixed data
        check_split(self, split, index)
        row, loc = self._lines[split][index], self._where[split][index]
        try:
            with Image.open(row["image"]) as img:
                img.load()
                array, converted = to_rgb_array(img, resolution)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{loc}: image {row['image']} is truncated or corrupt ({e}); replace the "
                             "file or remove the line.") from None
        refs = row.get("answers", row.get("references", [row["suffix"]]))
        if isinstance(refs, str) or not refs:
            refs = [refs] if isinstance(refs, str) and refs else [row["suffix"]]
        return {"image": array, "image_key": row["image"], "prefix": row["prefix"],
                "suffix": row["suffix"], "references": list(refs),
                "converted_from": converted}


class TfdsSource:
    """A TFDS dataset by name, decoded and resized inside tf.data, held in memory per split.

    `fields(example) -> (prefix, suffix, references)` turns a decoded TFDS example (numpy) into
    text; see `coco_captions_fields` and `classification_fields`.
    """

    def __init__(self, name: str, dataset: str, fields: Callable[[dict], tuple[str, str, list[str]]],
                 splits: Mapping[str, str], *, data_dir: str | None = None, image_key: str = "image",
                 id_key: str | None = None, builder_kwargs: Mapping | None = None):
        self.name, self.dataset, self.fields = name, dataset, fields
        self.splits, self.data_dir, self.image_feature, self.id_key = dict(splits), data_dir, image_key, id_key
        self.builder_kwargs = dict(builder_kwargs or {})
        self._loaded: dict[tuple[str, int], list[dict]] = {}
        self._sizes: dict[str, int] | None = None

    def _dataset(self, split: str):
        """The tf.data split, read from `data_dir` only: litlab never downloads at run time."""
        import tensorflow_datasets as tfds
        if split not in self.splits:
            raise ValueError(f"source {self.name!r} has no split {split!r}; its splits are {sorted(self.splits)}.")
        try:
            return tfds.load(self.dataset, split=self.splits[split], data_dir=self.data_dir, download=False,
                             builder_kwargs=self.builder_kwargs or None)
        except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError) as e:
            raise FileNotFoundError(
                f"source {self.name!r}: TFDS dataset {self.dataset!r} split {self.splits[split]!r} is not "
                f"prepared in data_dir={self.data_dir!r} ({e}); prepare it with `tfds build "
                f"{self.dataset} --data_dir DIR` and pass data_dir=DIR.") from None

    @property
    def split_sizes(self) -> dict[str, int]:
        if self._sizes is None:
            sizes = {}
            for split in self.splits:
                ds = self._dataset(split)
                n = int(ds.cardinality())
                sizes[split] = n if n >= 0 else sum(1 for _ in ds)
            self._sizes = sizes
        return self._sizes

    def _load(self, split: str, resolution: int) -> list[dict]:
        key = (split, resolution)
        if key not in self._loaded:
            import tensorflow as tf
            import tensorflow_datasets as tfds
            ds = self._dataset(split)

            def resize(ex):
                img = ex[self.image_feature]
                if img.shape[-1] == 1:
                    img = tf.image.grayscale_to_rgb(img)
                ex[self.image_feature] = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                    img[..., :3], (resolution, resolution), antialias=True)), 0, 255), tf.uint8)
                return ex

            rows = []
            for i, ex in enumerate(tfds.as_numpy(ds.map(resize, num_parallel_calls=tf.data.AUTOTUNE))):
                prefix, suffix, refs = self.fields(ex)
                ident = ex.get(self.id_key, i) if self.id_key else i
                rows.append({"image": ex[self.image_feature], "image_key": f"{self.name}/{split}/{ident}",
                             "prefix": prefix, "suffix": suffix, "references": refs, "converted_from": None})
            self._loaded[key] = rows
        return self._loaded[key]

    def get(self, split: str, index: int, *, seed: int = 0, resolution: int = 64) -> dict:
        del seed
        rows = self._load(split, resolution)
        if not 0 <= index < len(rows):
            raise IndexError(f"source {self.name!r} split {split!r} has {len(rows)} examples; index {index} is out of range.")
        return rows[index]


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def coco_captions_fields(ex: dict) -> tuple[str, str, list[str]]:
    """TFDS coco_captions: the first caption is the target, all are references."""
    refs = [_text(t) for t in ex["captions"]["text"]]
    return "", refs[0], refs


def classification_fields(label_names: list[str]) -> Callable[[dict], tuple[str, str, list[str]]]:
    """TFDS classification datasets (e.g. imagenet2012): the class name is the target."""
    def fields(ex):
        name = label_names[int(ex["label"])]
        return "", name, [name]
    return fields
