"""Labelled sample grids: the fastest way to see what a task asks of the model."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from litlab.data import tasks

CELL_SCALE = 3  # 64 px images shown at 192 px, nearest-neighbour so pixels stay honest
TEXT_LINES = 5


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def sample_grid(ts: tasks.TaskSplit, n: int = 16, columns: int = 4) -> Image.Image:
    """Images of the first `n` examples with their prompt and target written beneath."""
    n = min(n, len(ts))
    if n == 0:
        raise ValueError(f"task {ts.task!r} split {ts.split!r} has no examples to preview.")
    side = ts.images.shape[1] * CELL_SCALE
    font = _font(11)
    line_h = 13
    cell_w, cell_h = side + 8, side + 8 + TEXT_LINES * line_h
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), f"{ts.task} / {ts.split}", fill="black", font=_font(13))
    wrap = max(10, cell_w // 6)
    for k in range(n):
        x, y = (k % columns) * cell_w + 4, (k // columns) * cell_h + 22
        img = Image.fromarray(ts.images[ts.image_index[k]]).resize((side, side), Image.Resampling.NEAREST)
        canvas.paste(img, (x, y))
        prompt, target = ts.turns[k][0]
        lines = textwrap.wrap(f"> {prompt}" if prompt else "> (no prompt)", wrap)[:2]
        lines += textwrap.wrap(f"= {target}", wrap)[:TEXT_LINES - len(lines)]
        for j, line in enumerate(lines):
            draw.text((x, y + side + 2 + j * line_h), line, fill="navy" if line[0] == ">" else "black", font=font)
    return canvas


def write_grid(ts: tasks.TaskSplit, path: str | Path, n: int = 16) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(ts, n).save(path)
    return path

