"""Every piece of text the task suite writes: prompts, reasoning clauses and answer lines.

Prompts for the two VSP tasks are the official ``text_input`` strings word for word (typos included, so a
model trained here sees exactly what the official test set asks). Reasoning is templated, one short clause
per move, so that it is cheap to learn on a CPU and can be checked mechanically by :mod:`mirage_tasks.verifiers`.

All coordinates are ``(row,col)``, 0-based from the top-left corner, as in the official reasoning samples.
"""

from __future__ import annotations

LATENT_PLACEHOLDER = "<output_image>"
"""Marks where a latent block (the imagined helper image) goes in assistant text, as in the official data."""

IMAGE_MARKER = "<image>"
"""Marks where the input image goes in official ``text_input``."""

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# ---------------------------------------------------------------------------------------------------------
# Prompt suffixes: the official data uses the first for answer-only training and the second for reasoning.
# ---------------------------------------------------------------------------------------------------------
DIRECT_SUFFIX = "\n The final answer MUST BE put in \\boxed{}."
COT_SUFFIX = (
    "\n You FIRST think about the reasoning process as an internal monologue and then provide the final answer."
    " The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)

PLANNING_PROMPT = (
    "\nAs a professional maze solver, your task is to analyze a grid-based map and devise an action plan that"
    " enables a player to reach the goal from the starting point without falling into any holes, using the fewest"
    " possible moves.\n\n## Game Setup\n- The game presents a fully observable grid-based map.\n- The player starts"
    " at a specified grid square, with the goal located elsewhere on the map.\n- Each grid square is either safe or"
    " contains a hole.\n- Your goal is to guide the player to the goal while avoiding holes.\n\n\n## Moving Rules\n"
    "- The action plan involves a series of moves: 'L' (left), 'R' (right), 'U' (up), or 'D' (down).\n- Each move"
    " transfers the player to the adjacent square in that direction, provided it is a safe square. The player"
    " cannot move more than one square at a time.\n- Moving off the edge of the map has no effect. The player will"
    " remain at the same square.\n- DO NOT MOVE INTO A HOLE! Falling into a hole results in defeat.\n- Locating at"
    " the grid containing the goal results in victory.\n\nHere is the map: <image>\n\nPlease provide your action"
    " plan.{suffix}"
)

REASONING_PROMPT = (
    "\nAs a professional maze solver, your task is to analyze a grid-based map and decide whether a given action"
    " plan enables a player to reach the goal from the starting point without falling into any holes.\n\n## Setup\n"
    "- The game presents a fully observable grid-based map.\n- The player starts at a specified grid square, with"
    " the goal located elsewhere on the map.\n- Each grid square is either safe or contains a hole.\n- The provided"
    " action plan consists of a series of moves: 'LEFT' (left), 'RIGHT' (right), 'UP' (up), or 'DOWN' (down).\n"
    "- Each move transfers the player to the adjacent square in that direction, provided it is a safe square. The"
    " player cannot move more than one square at a time.\n- Moving off the edge of the map has no effect. The player"
    " will remain at the same square.\n- For each action plan and map, there are 3 possible outcomes:\n"
    "    - A. Action Success.\n    - B. Action Failed. Falling into a hole.\n"
    "    - C. Action Failed. Player safe but faile to reach the goal.\n\nDetermine the outcome of the action plan"
    " based on the map, and provide your answer with A, B, or C. \n\nHere is the map: <image>\n\n"
    "Full Action Plan: {plan}\n\nPlease provide your answer.{suffix}"
)

JIGSAW_PROMPT = (
    "\nAs a professional puzzle solver, your task is to find the piece that completes a picture.\n\n## Setup\n"
    "- The picture is a grid of shapes. Every row has one color and every column has one shape.\n"
    "- One cell of the picture is missing and shown as a gray square.\n"
    "- Below the picture are two candidate pieces: the left one is A and the right one is B.\n\n"
    "Decide which candidate fills the missing cell, and provide your answer with A or B. \n\n"
    "Here is the image: <image>\n\nPlease provide your answer.{suffix}"
)

# ---------------------------------------------------------------------------------------------------------
# Answers and reasoning clauses.
# ---------------------------------------------------------------------------------------------------------
ANSWER_LINE = "The answer is \\boxed{{{answer}}}."

MOVE_LETTERS = ("L", "D", "R", "U")
"""Move letters in gymnasium FrozenLake action order (0 = left, 1 = down, 2 = right, 3 = up)."""

MOVE_WORDS = ("LEFT", "DOWN", "RIGHT", "UP")
"""Move words of the reasoning task, in the same order as :data:`MOVE_LETTERS`."""

LETTER_TO_WORD = dict(zip(MOVE_LETTERS, MOVE_WORDS))
"""Move letter to move word (``"L"`` -> ``"LEFT"``): the one mapping between the two spellings of a move."""

WORD_TO_LETTER = dict(zip(MOVE_WORDS, MOVE_LETTERS))
"""Move word to move letter (``"LEFT"`` -> ``"L"``), the inverse of :data:`LETTER_TO_WORD`."""

TILE_WORDS = {0: "ice", 1: "start", 2: "goal", -1: "hole"}
"""How reasoning clauses name the tile a move lands on (keys are ``map_desc`` codes)."""

PLANNING_START_CLAUSE = "Start {start}, goal {goal}."
PLANNING_MOVE_CLAUSE = "{move} to {cell}."
PLANNING_END_CLAUSE = "Goal reached."

REASONING_MOVE_CLAUSE = "{move} to {cell} {tile}."
REASONING_STAY_CLAUSE = "{move} blocked at {cell}."
REASONING_END_CLAUSES = {
    "A": "Ends on the goal.",
    "B": "Fell in a hole.",
    "C": "Safe, not at the goal.",
}
REASONING_OPTIONS = {"success": "A", "hole": "B", "not_at_goal": "C"}
"""Maps a :func:`mirage_tasks.vsp.simulate_plan` outcome to the multiple-choice letter of the reasoning task."""

JIGSAW_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
JIGSAW_SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar", "star")
JIGSAW_GAP_CLAUSE = "Gap at {cell}: row color {color}, column shape {shape}."
JIGSAW_PIECE_CLAUSE = "{option} is a {color} {shape}."
JIGSAW_MATCH_CLAUSE = "{option} fits."


def cell_text(row: int, col: int) -> str:
    """Format a grid cell the way every template writes it: ``(row,col)``, 0-based."""
    return f"({row},{col})"


def answer_line(answer: str) -> str:
    """The closing answer sentence, e.g. ``The answer is \\boxed{LDR}.``"""
    return ANSWER_LINE.format(answer=answer)


def think(clauses: list[str]) -> str:
    """Wrap reasoning clauses in ``<think> ... </think>`` (one space on each side, as the official samples)."""
    return f"{THINK_OPEN} {' '.join(clauses)} {THINK_CLOSE}"
