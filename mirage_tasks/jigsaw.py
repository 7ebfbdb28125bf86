"""Jigsaw (BLINK-style): pick which of two candidate pieces fills the missing cell of a picture.

The picture is a ``level`` x ``level`` grid of shapes on white: every row has one color and every column one shape,
so the missing cell is decided by its row and its column. One cell is blanked out in gray. Below the picture sit two
candidate pieces, A on the left and B on the right; the wrong one differs from the right one in color (taken from
another row) or in shape (taken from another column). The helper image is the same composite with the correct piece
in place. Pictures are drawn with PIL from cached cell tiles (28 px per cell, one merged vision token of Qwen2.5-VL at native size).
"""

from __future__ import annotations

import random
from functools import cache

from PIL import Image, ImageDraw

from .sample import Sample
from .templates import (
    JIGSAW_COLORS,
    JIGSAW_GAP_CLAUSE,
    JIGSAW_MATCH_CLAUSE,
    JIGSAW_PIECE_CLAUSE,
    JIGSAW_PROMPT,
    JIGSAW_SHAPES,
    cell_text,
)

CLASSES = ("A", "B")
CELL = 28
"""Side of one picture cell in pixels."""

RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
    "cyan": (30, 190, 200),
    "pink": (240, 120, 180),
}
GAP_RGB = (128, 128, 128)
GRID_RGB = (210, 210, 210)


@cache
def piece(color: str, shape: str) -> Image.Image:
    """One cell: ``shape`` in ``color`` on white with a light border (cached; callers must not modify it)."""
    img = Image.new("RGB", (CELL, CELL), "white")
    draw = ImageDraw.Draw(img)
    fill, lo, hi, mid = RGB[color], 6, CELL - 7, CELL // 2
    if shape == "circle":
        draw.ellipse([lo, lo, hi, hi], fill=fill)
    elif shape == "square":
        draw.rectangle([lo + 2, lo + 2, hi - 2, hi - 2], fill=fill)
    elif shape == "triangle":
        draw.polygon([(mid, lo), (hi, hi), (lo, hi)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(mid, lo), (hi, mid), (mid, hi), (lo, mid)], fill=fill)
    elif shape == "cross":
        draw.rectangle([mid - 3, lo, mid + 3, hi], fill=fill)
        draw.rectangle([lo, mid - 3, hi, mid + 3], fill=fill)
    elif shape == "ring":
        draw.ellipse([lo, lo, hi, hi], outline=fill, width=4)
    elif shape == "bar":
        draw.rectangle([lo, mid - 4, hi, mid + 4], fill=fill)
    elif shape == "star":
        draw.polygon([(mid, lo), (mid + 4, mid - 2), (hi, mid), (mid + 4, mid + 2), (mid, hi), (mid - 4, mid + 2),
                      (lo, mid), (mid - 4, mid - 2)], fill=fill)  # fmt: skip
    else:
        raise ValueError(f"unknown shape {shape!r}")
    draw.rectangle([0, 0, CELL - 1, CELL - 1], outline=GRID_RGB)
    return img


def compose(colors: list[str], shapes: list[str], gap: tuple[int, int], pieces: tuple[tuple[str, str], ...],
            fill: tuple[str, str] | None) -> Image.Image:  # fmt: skip
    """The puzzle picture: the grid (gap in gray, or filled with ``fill``) above the candidate ``pieces`` (A, B)."""
    side = len(colors) * CELL
    img = Image.new("RGB", (side, side + 2 * CELL), "white")
    for r, color in enumerate(colors):
        for c, shape in enumerate(shapes):
            if (r, c) == gap:
                cell = piece(*fill) if fill else Image.new("RGB", (CELL, CELL), GAP_RGB)
            else:
                cell = piece(color, shape)
            img.paste(cell, (c * CELL, r * CELL))
    top = side + CELL // 2
    for i, candidate in enumerate(pieces):
        x = side * (2 * i + 1) // 4 - CELL // 2
        img.paste(piece(*candidate), (x, top))
        ImageDraw.Draw(img).rectangle([x - 1, top - 1, x + CELL, top + CELL], outline=(0, 0, 0))
    return img


def generate(rng: random.Random, level: int, index: int = 0) -> Sample:
    """Draw a ``level`` x ``level`` puzzle whose answer is ``CLASSES[index % 2]``."""
    answer = CLASSES[index % len(CLASSES)]
    colors = rng.sample(JIGSAW_COLORS, level)
    shapes = rng.sample(JIGSAW_SHAPES, level)
    gap = (rng.randrange(level), rng.randrange(level))
    right = (colors[gap[0]], shapes[gap[1]])
    if rng.random() < 0.5:
        wrong = (rng.choice([c for c in colors if c != right[0]]), right[1])
    else:
        wrong = (right[0], rng.choice([s for s in shapes if s != right[1]]))
    pieces = (right, wrong) if answer == "A" else (wrong, right)
    pre = [JIGSAW_GAP_CLAUSE.format(cell=cell_text(*gap), color=right[0], shape=right[1])]
    post = [JIGSAW_PIECE_CLAUSE.format(option=o, color=p[0], shape=p[1]) for o, p in zip(CLASSES, pieces)]
    post.append(JIGSAW_MATCH_CLAUSE.format(option=answer))
    key = f"jigsaw:{'/'.join(colors)}:{'/'.join(shapes)}:{cell_text(*gap)}:{'/'.join(map(' '.join, pieces))}"
    return Sample(
        key=key,
        prompt_template=JIGSAW_PROMPT,
        image=compose(colors, shapes, gap, pieces, None),
        helper=lambda: compose(colors, shapes, gap, pieces, right),
        pre=pre,
        post=post,
        answer=answer,
        level=level,
    )
