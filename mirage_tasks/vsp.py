"""FrozenLake maps for the VSP tasks: validation, random generation, shortest paths, simulation and rendering.

A map is a ``map_desc``: a rectangular list of rows of integer codes, as in the official data::

    1 = start (S)    2 = goal (G)    -1 = hole (H)    0 = frozen ice (F)

Rendering reproduces ``gymnasium==0.29.1`` FrozenLake (``render_mode="rgb_array"``, ``is_slippery=False``) pixel
for pixel. Instead of stepping a gymnasium environment per picture, :func:`render_map` composes cached cell tiles
with numpy; each tile is drawn once with pygame from gymnasium's own sprites, in the same order gymnasium draws
them, so the result is identical (``tests/test_tasks_render.py`` checks it against gymnasium and against all 400
official test images) and about two orders of magnitude faster.

Simulation follows the rules of the official prompts: a move off the edge does nothing, a move into a hole ends
the episode in failure, and reaching the goal ends it in success (FrozenLake's goal is terminal).
"""

from __future__ import annotations

import os
import random
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from .errors import TaskDataError
from .templates import MOVE_LETTERS, MOVE_WORDS, WORD_TO_LETTER

START, GOAL, HOLE, ICE = 1, 2, -1, 0
CODE_TO_LETTER = {START: "S", GOAL: "G", HOLE: "H", ICE: "F"}
LETTER_TO_CODE = {letter: code for code, letter in CODE_TO_LETTER.items()}
MIN_SIDE, MAX_SIDE = 3, 8
"""Supported map side lengths for generation (the level of a planning example is its side length)."""

DELTAS = {"L": (0, -1), "D": (1, 0), "R": (0, 1), "U": (-1, 0)}
"""Row/column change of each move letter."""

Outcome = Literal["success", "hole", "not_at_goal", "invalid"]
MapDesc = Sequence[Sequence[int]]
Cell = tuple[int, int]


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------
def validate_map_desc(map_desc: object, *, row: int | str | None = None, field: str = "map_desc") -> np.ndarray:
    """Check a ``map_desc`` and return it as an ``int8`` array of shape ``(rows, cols)``.

    Raises:
        TaskDataError: naming ``row`` and ``field`` when the map is not a non-empty rectangular grid of the codes
            -1/0/1/2, or does not hold exactly one start (1) and exactly one goal (2).
    """
    if isinstance(map_desc, np.ndarray):
        map_desc = map_desc.tolist()
    if not isinstance(map_desc, (list, tuple)) or not map_desc:
        raise TaskDataError("expected a non-empty list of rows", row=row, field=field)
    widths = []
    for i, line in enumerate(map_desc):
        if not isinstance(line, (list, tuple)) or not line:
            raise TaskDataError(f"line {i} is not a non-empty list of cells", row=row, field=field)
        widths.append(len(line))
    if len(set(widths)) != 1:
        raise TaskDataError(f"map is not rectangular: line lengths {widths}", row=row, field=field)
    values = {v for line in map_desc for v in line}
    bad = sorted(str(v) for v in values if isinstance(v, bool) or v not in CODE_TO_LETTER)
    if bad:
        raise TaskDataError(f"unknown cell codes {', '.join(bad)}; expected -1, 0, 1 or 2", row=row, field=field)
    grid = np.asarray(map_desc, dtype=np.int8)
    for code, name in ((START, "start"), (GOAL, "goal")):
        count = int((grid == code).sum())
        if count != 1:
            raise TaskDataError(f"expected exactly one {name} ({code}), found {count}", row=row, field=field)
    return grid


def find_cell(grid: np.ndarray, code: int) -> Cell:
    """Return the ``(row, col)`` of the first cell holding ``code``."""
    r, c = np.argwhere(grid == code)[0]
    return int(r), int(c)


def map_key(map_desc: MapDesc | np.ndarray) -> str:
    """A canonical string for a map, used to keep splits disjoint: FrozenLake letters row by row (``"SFH/FFG/FFF"``)."""
    return "/".join("".join(CODE_TO_LETTER[int(v)] for v in line) for line in np.asarray(map_desc).tolist())


def map_from_key(key: str, *, row: int | str | None = None, field: str = "map") -> list[list[int]]:
    """The ``map_desc`` a :func:`map_key` string stands for (its inverse), validated.

    Raises:
        TaskDataError: naming ``row`` and ``field`` when a letter is not one of ``S``/``G``/``H``/``F`` or the map
            is invalid (see :func:`validate_map_desc`).
    """
    bad = sorted(set(key) - set(LETTER_TO_CODE) - {"/"})
    if bad:
        raise TaskDataError(f"unknown map letters {', '.join(bad)} in {key!r}; expected S, G, H, F", row=row, field=field)  # fmt: skip
    return validate_map_desc([[LETTER_TO_CODE[c] for c in line] for line in key.split("/")], row=row, field=field).tolist()  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# Moves, simulation, shortest paths
# ---------------------------------------------------------------------------------------------------------
_MOVE_TOKEN = re.compile("|".join(MOVE_WORDS) + f"|[{''.join(MOVE_LETTERS)}]", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,;\-\u2192>]*")


def parse_moves(text: str | None) -> str | None:
    """Parse a move string and return it as letters (``"LDRU"``), or ``None`` when it is not a plan.

    Accepts letters (``LDRU``, ``L, D, R``) and words (``LEFT, DOWN``), any case, separated by nothing, spaces,
    commas, semicolons, dashes or arrows. Anything else, and an empty plan, gives ``None``.
    """
    if text is None:
        return None
    pos, letters = 0, []
    text = text.strip()
    while pos < len(text):
        pos = _SEPARATORS.match(text, pos).end()
        if pos >= len(text):
            break
        token = _MOVE_TOKEN.match(text, pos)
        if token is None:
            return None
        word = token.group(0).upper()
        letters.append(WORD_TO_LETTER.get(word, word))
        pos = token.end()
    return "".join(letters) or None


def step(grid: np.ndarray, cell: Cell, move: str) -> Cell:
    """Where a move from ``cell`` lands: the neighbouring cell, or ``cell`` itself when it would leave the map."""
    dr, dc = DELTAS[move]
    r, c = cell[0] + dr, cell[1] + dc
    if 0 <= r < grid.shape[0] and 0 <= c < grid.shape[1]:
        return r, c
    return cell


@dataclass(frozen=True)
class Step:
    """One move of a simulated plan: the move letter, where it landed, and what that cell is."""

    move: str
    cell: Cell
    code: int
    blocked: bool
    """True when the move would have left the map, so the player stayed put."""


def trace_plan(grid: np.ndarray, moves: str) -> list[Step]:
    """Simulate ``moves`` (letters) from the start and return the steps taken, stopping on a hole or the goal."""
    cell = find_cell(grid, START)
    steps = []
    for move in moves:
        nxt = step(grid, cell, move)
        code = int(grid[nxt])
        steps.append(Step(move, nxt, code, blocked=nxt == cell))
        cell = nxt
        if code in (HOLE, GOAL):
            break
    return steps


def outcome_of(steps: list[Step]) -> Outcome:
    """The outcome of a traced plan: ``success``, ``hole`` or ``not_at_goal``."""
    last = steps[-1].code if steps else START
    return "success" if last == GOAL else "hole" if last == HOLE else "not_at_goal"


def simulate_plan(map_desc: MapDesc, moves: str | None) -> Outcome:
    """Play a move string on a map and say how it ends.

    Args:
        map_desc: the map (validated; see :func:`validate_map_desc`).
        moves: a plan in any form :func:`parse_moves` accepts, e.g. ``"LDR"`` or ``"LEFT, DOWN"``.

    Returns:
        ``"success"`` when the player reaches the goal, ``"hole"`` when it falls into a hole first,
        ``"not_at_goal"`` when the plan ends safely elsewhere, ``"invalid"`` when ``moves`` is not a plan.
    """
    grid = validate_map_desc(map_desc)
    letters = parse_moves(moves)
    if letters is None:
        return "invalid"
    return outcome_of(trace_plan(grid, letters))


def shortest_moves(grid: np.ndarray, source: Cell, targets: set[Cell]) -> str | None:
    """Breadth-first search: the fewest moves (letters) from ``source`` to the nearest of ``targets``.

    Paths never enter a hole, nor pass over the goal unless it is a target (the goal ends an episode). Neighbours are
    tried in the fixed order L, D, R, U, so the answer is deterministic. ``None`` when no target can be reached.
    """
    came_from: dict[Cell, tuple[Cell, str] | None] = {source: None}
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        if cell in targets:
            moves = []
            while came_from[cell] is not None:
                cell, move = came_from[cell]
                moves.append(move)
            return "".join(reversed(moves))
        for move in MOVE_LETTERS:
            nxt = step(grid, cell, move)
            if nxt not in came_from and grid[nxt] != HOLE and (grid[nxt] != GOAL or nxt in targets):
                came_from[nxt] = (cell, move)
                queue.append(nxt)
    return None


def shortest_path(grid: np.ndarray) -> str | None:
    """The fewest moves (letters) from the start to the goal over non-hole cells, or ``None`` if unreachable."""
    return shortest_moves(grid, find_cell(grid, START), {find_cell(grid, GOAL)})


def solve_map(map_desc: MapDesc) -> str:
    """Return a shortest move string (letters ``L``/``R``/``U``/``D``) from the start to the goal.

    Raises:
        TaskDataError: when the map is invalid or its goal cannot be reached without crossing a hole.
    """
    grid = validate_map_desc(map_desc)
    path = shortest_path(grid)
    if path is None:
        raise TaskDataError("the goal cannot be reached from the start", field="map_desc")
    return path


def random_map(rng: random.Random, side: int, hole_prob: float = 0.2) -> list[list[int]]:
    """Draw a ``side`` x ``side`` map with the start and goal on distinct random cells and a reachable goal.

    Every other cell is a hole with probability ``hole_prob`` (0.2 gives the 13-18 % hole density of the official
    test set); maps whose goal is unreachable are redrawn.
    """
    cells = side * side
    while True:
        start, goal = rng.sample(range(cells), 2)
        flat = [HOLE if rng.random() < hole_prob else ICE for _ in range(cells)]
        flat[start], flat[goal] = START, GOAL
        grid = np.asarray(flat, dtype=np.int8).reshape(side, side)
        if shortest_path(grid) is not None:
            return grid.tolist()


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------
_FACING = {letter: action for action, letter in enumerate(MOVE_LETTERS)}
"""Index of the elf sprite facing each move (gymnasium's action order); the initial state faces down."""

_TILE_KINDS = ("ice", "hole", "goal", "start")
_CODE_TO_KIND = {ICE: "ice", HOLE: "hole", GOAL: "goal", START: "start"}
_BORDER = (180, 200, 230)


def _sprite_dir() -> Path:
    import gymnasium.envs.toy_text.frozen_lake as frozen_lake

    return Path(frozen_lake.__file__).parent / "img"


@lru_cache(maxsize=8)
def _tiles(cell_w: int, cell_h: int) -> dict[str, np.ndarray]:
    """Every cell picture gymnasium can draw at this cell size, as ``(h, w, 3)`` uint8 arrays.

    Keys: ``ice``/``hole``/``goal``/``start`` (empty cells) and ``<kind>@<facing>`` (the elf on that cell, facing
    0-3) and ``cracked`` (the player in a hole). Each is painted with pygame exactly as
    ``FrozenLakeEnv._render_gui`` paints it: ice, then the cell's sprite, then the 1-px border, then the player.
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    folder = _sprite_dir()

    def load(name: str) -> pygame.Surface:
        return pygame.transform.scale(pygame.image.load(str(folder / name)), (cell_w, cell_h))

    ice, overlay = load("ice.png"), {"hole": load("hole.png"), "goal": load("goal.png"), "start": load("stool.png")}
    cracked = load("cracked_hole.png")
    elves = [load(f"elf_{d}.png") for d in ("left", "down", "right", "up")]

    def paint(kind: str, player: pygame.Surface | None) -> np.ndarray:
        # Same surface type as gymnasium's window (a plain pygame.Surface), so alpha blending is identical.
        surface = pygame.Surface((cell_w, cell_h))
        surface.blit(ice, (0, 0))
        if kind in overlay:
            surface.blit(overlay[kind], (0, 0))
        pygame.draw.rect(surface, _BORDER, (0, 0, cell_w, cell_h), 1)
        if player is not None:
            surface.blit(player, (0, 0))
        return np.transpose(np.array(pygame.surfarray.pixels3d(surface)), (1, 0, 2)).copy()

    tiles = {kind: paint(kind, None) for kind in _TILE_KINDS}
    for kind in _TILE_KINDS:
        for facing, elf in enumerate(elves):
            tiles[f"{kind}@{facing}"] = paint(kind, elf)
    tiles["cracked"] = paint("hole", cracked)
    return tiles


CELL_PX = 64
"""Pixels per cell of a gymnasium FrozenLake picture of a map of side 3-8 (its window is 64 px a cell up to 512)."""


def window_size(rows: int, cols: int) -> tuple[int, int]:
    """Gymnasium's ``(width, height)`` of the rendered picture for a map of ``rows`` x ``cols``."""
    return min(CELL_PX * cols, 512), min(CELL_PX * rows, 512)


def render_array(map_desc: MapDesc | np.ndarray, player: Cell | None = None, facing: str | None = None) -> np.ndarray:
    """Render a map as gymnasium 0.29.1 FrozenLake does, as an ``(H, W, 3)`` uint8 array.

    Args:
        map_desc: the map.
        player: where the player stands (default: the start cell).
        facing: the last move letter, which decides the elf sprite (default: facing down, as after ``reset``).
            A player on a hole is drawn as gymnasium draws it, as a cracked hole.
    """
    grid = map_desc if isinstance(map_desc, np.ndarray) else validate_map_desc(map_desc)
    rows, cols = grid.shape
    width, height = window_size(rows, cols)
    cell_w, cell_h = width // cols, height // rows
    tiles = _tiles(cell_w, cell_h)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    for (r, c), code in np.ndenumerate(grid):
        out[r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w] = tiles[_CODE_TO_KIND[int(code)]]
    pr, pc = find_cell(grid, START) if player is None else player
    code = int(grid[pr, pc])
    tile = tiles["cracked"] if code == HOLE else tiles[f"{_CODE_TO_KIND[code]}@{_FACING[facing or 'D']}"]
    out[pr * cell_h : (pr + 1) * cell_h, pc * cell_w : (pc + 1) * cell_w] = tile
    return out


def render_map(map_desc: MapDesc, player: Cell | None = None, facing: str | None = None) -> Image.Image:
    """Render a map as the official VSP images are rendered, as an RGB PIL image (see :func:`render_array`)."""
    return Image.fromarray(render_array(map_desc, player, facing))


def render_with_gymnasium(map_desc: MapDesc, moves: str = "") -> np.ndarray:
    """Reference rendering: step a real gymnasium FrozenLake through ``moves`` and return ``env.render()``.

    Slow (one environment per call); used by the tests to check :func:`render_array`.
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    # gymnasium calls pygame.init(); an rgb_array render needs neither a display nor a sound device, and without
    # these SDL prints an error per call on headless machines.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

    grid = validate_map_desc(map_desc)
    desc = ["".join(CODE_TO_LETTER[int(v)] for v in line) for line in grid]
    env = FrozenLakeEnv(desc=desc, is_slippery=False, render_mode="rgb_array")
    env.reset(seed=0)
    for move in moves:
        _, _, terminated, _, _ = env.step(_FACING[move])
        if terminated:
            break
    frame = env.render()
    env.close()
    return frame


def render_state(grid: np.ndarray, steps: list[Step], k: int) -> Image.Image:
    """The picture after the first ``k`` steps of a traced plan (the official ``map_NxN_step_k.png``)."""
    if k == 0:
        return Image.fromarray(render_array(grid))
    last = steps[k - 1]
    return Image.fromarray(render_array(grid, last.cell, last.move))


def draw_path(map_desc: MapDesc | np.ndarray, moves: str, color: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    """The start map with ``moves`` drawn as arrows from cell centre to cell centre (the planning helper image).

    Moves that would leave the map are skipped; the arrows stop at a hole or at the goal.
    """
    grid = map_desc if isinstance(map_desc, np.ndarray) else validate_map_desc(map_desc)
    image = Image.fromarray(render_array(grid))
    rows, cols = grid.shape
    width, height = window_size(rows, cols)
    cw, ch = width // cols, height // rows
    draw = ImageDraw.Draw(image)
    shaft, head = max(2, cw // 12), max(6, cw // 5)
    cell = find_cell(grid, START)
    for s in trace_plan(grid, moves):
        if s.blocked:
            continue
        (r0, c0), (r1, c1) = cell, s.cell
        x0, y0 = c0 * cw + cw / 2, r0 * ch + ch / 2
        x1, y1 = c1 * cw + cw / 2, r1 * ch + ch / 2
        dx, dy = np.sign(x1 - x0), np.sign(y1 - y0)
        tip = (x1 - dx * cw * 0.1, y1 - dy * ch * 0.1)
        base = (tip[0] - dx * head, tip[1] - dy * head)
        draw.line([(x0 + dx * cw * 0.1, y0 + dy * ch * 0.1), base], fill=color, width=shaft)
        px, py = -dy * head * 0.6, dx * head * 0.6  # perpendicular half-width of the head
        draw.polygon([tip, (base[0] + px, base[1] + py), (base[0] - px, base[1] - py)], fill=color)
        cell = s.cell
    return image


@lru_cache(maxsize=8)
def _tile_codes(cell_w: int, cell_h: int) -> dict[bytes, frozenset[int]]:
    """Tile pixels -> the map codes that tile can stand for.

    Two pictures are ambiguous: the elf facing down or up hides the start's stool completely, so "player on the
    start" and "player on ice" are the same pixels; :func:`map_from_image` settles those by counting starts.
    """
    codes = {kind: code for code, kind in _CODE_TO_KIND.items()} | {"cracked": HOLE}
    table: dict[bytes, set[int]] = {}
    for name, tile in _tiles(cell_w, cell_h).items():
        table.setdefault(tile.tobytes(), set()).add(codes[name.split("@")[0]])
    return {key: frozenset(value) for key, value in table.items()}


def map_from_image(image: Image.Image) -> list[list[int]] | None:
    """Read the ``map_desc`` back from a rendered FrozenLake picture, or ``None`` when it is not one.

    Works on any state picture (the player anywhere, as in the official ``map_NxN_step_k.png``) of a square map of
    side 3-8 drawn at :data:`CELL_PX` pixels per cell; every cell must match one of gymnasium's tiles exactly, so
    ordinary photos or resized images give ``None`` (:func:`read_map_image` says why instead). The official reasoning
    samples carry no ``map_desc``; this recovers it from their input image.
    """
    try:
        return read_map_image(image)
    except TaskDataError:
        return None


def read_map_image(image: Image.Image) -> list[list[int]]:
    """Like :func:`map_from_image`, but a picture that is not a FrozenLake map raises instead of giving ``None``.

    Raises:
        TaskDataError: saying what does not fit: the picture's size (it must be a square of 3-8 cells of
            :data:`CELL_PX` px) or the first cell that is none of gymnasium's tiles.
    """
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    side = width // CELL_PX
    if width != height or width % CELL_PX or not MIN_SIDE <= side <= MAX_SIDE:
        raise TaskDataError(
            f"a {width}x{height} px picture is not a FrozenLake map drawn at {CELL_PX} px per cell: expected a square"
            f" of {MIN_SIDE}-{MAX_SIDE} cells ({MIN_SIDE * CELL_PX}-{MAX_SIDE * CELL_PX} px), as gymnasium 0.29.1"
            " renders it"
        )
    table = _tile_codes(CELL_PX, CELL_PX)
    grid: list[list[int]] = []
    ambiguous: list[Cell] = []
    for r in range(side):
        grid.append([])
        for c in range(side):
            cell = pixels[r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX]
            hit = table.get(np.ascontiguousarray(cell).tobytes())
            if hit is None:
                raise TaskDataError(
                    f"cell ({r},{c}) of the {width}x{height} px picture is none of gymnasium 0.29.1's FrozenLake"
                    f" tiles at {CELL_PX} px per cell (a resized, re-drawn or lossy picture?)"
                )
            if len(hit) > 1:
                ambiguous.append((r, c))
            grid[-1].append(min(hit) if len(hit) == 1 else ICE)
    if len(ambiguous) > 1:
        raise TaskDataError(f"the player is drawn on {len(ambiguous)} cells; a FrozenLake picture shows one")
    if ambiguous and not any(START in line for line in grid):
        grid[ambiguous[0][0]][ambiguous[0][1]] = START  # no stool in sight: the player is standing on it
    return grid
