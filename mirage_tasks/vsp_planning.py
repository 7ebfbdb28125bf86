"""VSP spatial planning: find the shortest safe move string from the start to the goal of a FrozenLake map.

The answer is the breadth-first-search path as letters (``\\boxed{DDR}``); the helper image is the start map with
that path drawn as red arrows; the templated reasoning names the start and goal, then each move and the cell it
reaches. A model's plan is scored by simulation (:func:`mirage_tasks.vsp.simulate_plan`), so any shortest-or-not plan
that reaches the goal counts as a success.
"""

from __future__ import annotations

import random

import numpy as np

from .sample import Sample
from .templates import PLANNING_END_CLAUSE, PLANNING_MOVE_CLAUSE, PLANNING_PROMPT, PLANNING_START_CLAUSE, cell_text
from .vsp import GOAL, START, draw_path, find_cell, map_key, random_map, render_map, shortest_path, trace_plan


def reasoning_clauses(grid: np.ndarray, moves: str) -> tuple[list[str], list[str]]:
    """Reasoning for a plan: ``pre`` = where start and goal are; ``post`` = each move and where it lands.

    The helper image (the drawn path) sits between the two: having imagined the path, the model reads it off.
    """
    pre = [
        PLANNING_START_CLAUSE.format(start=cell_text(*find_cell(grid, START)), goal=cell_text(*find_cell(grid, GOAL)))
    ]
    post = [PLANNING_MOVE_CLAUSE.format(move=s.move, cell=cell_text(*s.cell)) for s in trace_plan(grid, moves)]
    post.append(PLANNING_END_CLAUSE)
    return pre, post


def sample_from_map(map_desc: list[list[int]]) -> Sample:
    """Build the planning problem of a given (valid, solvable) map."""
    grid = np.asarray(map_desc, dtype=np.int8)
    moves = shortest_path(grid)
    pre, post = reasoning_clauses(grid, moves)
    return Sample(
        key=map_key(grid),
        prompt_template=PLANNING_PROMPT,
        image=render_map(grid),
        helper=lambda: draw_path(grid, moves),
        pre=pre,
        post=post,
        answer=moves,
        level=int(grid.shape[0]),
        map_desc=grid.tolist(),
    )


def generate(rng: random.Random, level: int, index: int = 0) -> Sample:
    """Draw a random ``level`` x ``level`` map with a reachable goal and return its planning problem."""
    return sample_from_map(random_map(rng, level))
