"""Representative texts of every task and variant, for training a small tokenizer.

:func:`vocabulary_corpus` writes every prompt (with both instruction suffixes), every reasoning clause with every
coordinate a map of up to 8x8 can have, answer lines for every option and many move strings. It renders nothing and
draws from a fixed seed, so it is fast (well under a second) and returns the same list on every call.
"""

from __future__ import annotations

import random

from . import templates
from .templates import LATENT_PLACEHOLDER, answer_line, cell_text, think
from .variants import VARIANTS, prompt_suffix

_MAX_SIDE = 8


def _plans(rng: random.Random, count: int) -> list[str]:
    """Random move-word plans such as ``RIGHT, UP, LEFT`` of 1-8 moves."""
    return [", ".join(rng.choice(templates.MOVE_WORDS) for _ in range(rng.randint(1, 8))) for _ in range(count)]


def _move_strings(rng: random.Random, count: int) -> list[str]:
    """Random planning answers such as ``LDDR`` of 1-14 moves."""
    return ["".join(rng.choice(templates.MOVE_LETTERS) for _ in range(rng.randint(1, 14))) for _ in range(count)]


def vocabulary_corpus() -> list[str]:
    """Return a deterministic list of texts covering everything the task suite can write.

    It holds: each task's prompt under each variant's suffix (reasoning prompts with several plans), every
    planning, reasoning and jigsaw clause over all ``(row,col)`` cells up to 8x8, every answer line, the latent
    placeholder, ``<think>`` tags, digits and the move names, plus whole example completions for every variant.
    """
    rng = random.Random(0)
    texts: list[str] = []
    for variant in VARIANTS:
        suffix = prompt_suffix(variant)
        texts.append(templates.PLANNING_PROMPT.format(suffix=suffix))
        texts.append(templates.JIGSAW_PROMPT.format(suffix=suffix))
        texts.extend(templates.REASONING_PROMPT.format(plan=plan, suffix=suffix) for plan in _plans(rng, 4))

    cells = [cell_text(r, c) for r in range(_MAX_SIDE) for c in range(_MAX_SIDE)]
    planning, reasoning = [], []
    for i, cell in enumerate(cells):
        other = cells[(i * 7 + 3) % len(cells)]
        letter = templates.MOVE_LETTERS[i % 4]
        word = templates.MOVE_WORDS[i % 4]
        tile = list(templates.TILE_WORDS.values())[i % len(templates.TILE_WORDS)]
        planning.append(templates.PLANNING_START_CLAUSE.format(start=cell, goal=other))
        planning.append(templates.PLANNING_MOVE_CLAUSE.format(move=letter, cell=cell))
        reasoning.append(templates.REASONING_MOVE_CLAUSE.format(move=word, cell=cell, tile=tile))
        reasoning.append(templates.REASONING_STAY_CLAUSE.format(move=word, cell=cell))
    planning.append(templates.PLANNING_END_CLAUSE)
    reasoning.extend(templates.REASONING_END_CLAUSES.values())
    jigsaw = []
    for i, color in enumerate(templates.JIGSAW_COLORS):
        for j, shape in enumerate(templates.JIGSAW_SHAPES):
            jigsaw.append(templates.JIGSAW_GAP_CLAUSE.format(cell=cell_text(i, j), color=color, shape=shape))
            jigsaw.append(templates.JIGSAW_PIECE_CLAUSE.format(option="AB"[(i + j) % 2], color=color, shape=shape))
    jigsaw.extend(templates.JIGSAW_MATCH_CLAUSE.format(option=o) for o in "AB")

    # Whole completions in every layout, so tokenizer merges see the real joins ("</think><output_image>...").
    for clauses, answers in ((planning, _move_strings(rng, 40)), (reasoning, list("ABC")), (jigsaw, list("AB"))):
        for start in range(0, len(clauses), 6):
            chunk = clauses[start : start + 6]
            answer = answers[(start // 6) % len(answers)]
            texts.append(answer_line(answer))
            texts.append(think(chunk) + answer_line(answer))
            texts.append(LATENT_PLACEHOLDER + answer_line(answer))
            texts.append(think(chunk[:3]) + LATENT_PLACEHOLDER + think(chunk[3:]) + answer_line(answer))
    texts.extend(answer_line(a) for a in "ABC")
    texts.append(" ".join("0123456789"))
    texts.append(" ".join(templates.MOVE_LETTERS + templates.MOVE_WORDS))
    return texts
