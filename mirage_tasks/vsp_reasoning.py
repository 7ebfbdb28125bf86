"""VSP spatial reasoning: say how a given action plan ends on a FrozenLake map.

Options, as in the official prompt: A = reaches the goal, B = falls into a hole, C = safe but not at the goal.
Generated plans stop at the step that settles the outcome (the goal or a hole is terminal), so the answer never
depends on what happens after it. Plans are drawn so that the three answers are equally frequent:

- A: a random safe walk of 0-3 moves, then a shortest path to the goal;
- B: a random safe walk of 0-3 moves, then a shortest safe path to a square beside a hole, then into the hole;
- C: a random walk of 1 to ``level + 2`` moves that avoids holes and the goal (moves off the edge included).

The helper image is the rendered state after ``k`` moves (the official ``map_NxN_step_k.png``). With
``helper_step="decisive"`` (the default) ``k`` is the step that decides the outcome, i.e. the last one. The official
samples instead pick ``k`` uniformly among the plan's steps (their ``step_k`` is neither always the last nor the
decisive one); ``helper_step="random"`` reproduces that. The latent block goes after the ``k``-th move's clause.
"""

from __future__ import annotations

import random
from typing import Literal

import numpy as np

from .sample import Sample
from .templates import (
    LETTER_TO_WORD,
    MOVE_LETTERS,
    REASONING_END_CLAUSES,
    REASONING_MOVE_CLAUSE,
    REASONING_OPTIONS,
    REASONING_PROMPT,
    REASONING_STAY_CLAUSE,
    TILE_WORDS,
    cell_text,
)
from .vsp import (
    DELTAS,
    GOAL,
    HOLE,
    START,
    Cell,
    Step,
    find_cell,
    map_key,
    outcome_of,
    random_map,
    render_map,
    render_state,
    shortest_moves,
    step,
    trace_plan,
)

CLASSES = ("A", "B", "C")
HelperStep = Literal["decisive", "random"]


def plan_words(moves: str) -> str:
    """Letters to the plan wording of the prompt: ``"RU"`` -> ``"RIGHT, UP"``."""
    return ", ".join(LETTER_TO_WORD[m] for m in moves)


def step_clause(s: Step) -> str:
    """One reasoning clause for one simulated move."""
    word = LETTER_TO_WORD[s.move]
    if s.blocked:
        return REASONING_STAY_CLAUSE.format(move=word, cell=cell_text(*s.cell))
    return REASONING_MOVE_CLAUSE.format(move=word, cell=cell_text(*s.cell), tile=TILE_WORDS[s.code])


def reasoning_clauses(steps: list[Step], k: int) -> tuple[list[str], list[str]]:
    """Clauses for the first ``k`` moves (``pre``), then for the rest and the conclusion (``post``)."""
    clauses = [step_clause(s) for s in steps]
    answer = REASONING_OPTIONS[outcome_of(steps)]
    return clauses[:k], clauses[k:] + [REASONING_END_CLAUSES[answer]]


def _safe_walk(rng: random.Random, grid: np.ndarray, length: int) -> tuple[str, Cell]:
    """A random walk from the start that never enters a hole or the goal (moves off the edge are allowed)."""
    cell, moves = find_cell(grid, START), []
    for _ in range(length):
        options = [m for m in MOVE_LETTERS if grid[step(grid, cell, m)] not in (HOLE, GOAL)]
        if not options:
            break
        move = rng.choice(options)
        moves.append(move)
        cell = step(grid, cell, move)
    return "".join(moves), cell


def draw_plan(rng: random.Random, grid: np.ndarray, answer: str) -> str | None:
    """A plan for ``grid`` whose outcome is ``answer`` (A/B/C), or ``None`` when this map cannot give it."""
    rows, cols = grid.shape
    if answer == "C":
        moves, _ = _safe_walk(rng, grid, rng.randint(1, rows + 2))
        return moves or None
    prefix, cell = _safe_walk(rng, grid, rng.randint(0, 3))
    if answer == "A":
        rest = shortest_moves(grid, cell, {find_cell(grid, GOAL)})
        return None if rest is None else prefix + rest
    beside_hole: dict[Cell, str] = {}
    for (r, c), code in np.ndenumerate(grid):
        if code in (HOLE, GOAL):
            continue
        for move, (dr, dc) in DELTAS.items():
            if 0 <= r + dr < rows and 0 <= c + dc < cols and grid[r + dr, c + dc] == HOLE:
                beside_hole.setdefault((int(r), int(c)), move)
    rest = shortest_moves(grid, cell, set(beside_hole))
    if rest is None:
        return None
    end = cell
    for move in rest:
        end = step(grid, end, move)
    return prefix + rest + beside_hole[end]


def sample_from_plan(
    map_desc: list[list[int]], moves: str, *, helper_step: HelperStep = "decisive", rng: random.Random | None = None
) -> Sample:
    """Build the reasoning problem for a map and a plan (letters); the plan is cut at its terminal step."""
    grid = np.asarray(map_desc, dtype=np.int8)
    steps = trace_plan(grid, moves)
    moves = "".join(s.move for s in steps)
    if helper_step == "decisive":
        k = len(steps)
    elif helper_step == "random":
        k = (rng or random.Random(0)).randint(1, len(steps))
    else:
        raise ValueError(f"helper_step must be 'decisive' or 'random', got {helper_step!r}")
    pre, post = reasoning_clauses(steps, k)
    plan = plan_words(moves)
    return Sample(
        key=map_key(grid),
        prompt_template=REASONING_PROMPT.replace("{plan}", plan),
        image=render_map(grid),
        helper=lambda: render_state(grid, steps, k),
        pre=pre,
        post=post,
        answer=REASONING_OPTIONS[outcome_of(steps)],
        level=int(grid.shape[0]),
        map_desc=grid.tolist(),
        plan=plan,
    )


def generate(rng: random.Random, level: int, index: int = 0, *, helper_step: HelperStep = "decisive") -> Sample:
    """Draw a map and a plan whose answer is ``CLASSES[index % 3]``, so consecutive indices balance A/B/C."""
    answer = CLASSES[index % len(CLASSES)]
    while True:
        grid = np.asarray(random_map(rng, level), dtype=np.int8)
        moves = draw_plan(rng, grid, answer)
        if moves is not None:
            return sample_from_plan(grid.tolist(), moves, helper_step=helper_step, rng=rng)
