"""Verifiers: answer extraction, format checks, scores (rewards-to-be) and checks of templated reasoning.

Scoring rules (as in the paper and the official evaluation):

- planning: the last ``\\boxed{...}`` is read as a move string and simulated on the map; only ``success`` scores 1.
  An answer without ``\\boxed{}``, or whose content is not a move string, is ``invalid``.
- multiple choice (reasoning, jigsaw): the option letter in the last ``\\boxed{...}`` (``A``, ``(A)``,
  ``A. Action Success`` all read as ``A``) must equal the gold letter.
- format: the answer is in ``\\boxed{}`` after any reasoning, and reasoning sits in well-formed ``<think>`` blocks.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .templates import (
    LATENT_PLACEHOLDER,
    MOVE_LETTERS,
    MOVE_WORDS,
    PLANNING_END_CLAUSE,
    REASONING_END_CLAUSES,
    REASONING_OPTIONS,
    THINK_CLOSE,
    THINK_OPEN,
    TILE_WORDS,
    WORD_TO_LETTER,
)
from .vsp import (
    GOAL,
    HOLE,
    START,
    MapDesc,
    Outcome,
    find_cell,
    outcome_of,
    parse_moves,
    simulate_plan,
    step,
    trace_plan,
    validate_map_desc,
)

_BOXED = "\\boxed{"


def extract_boxed(text: str | None) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), stripped; ``None`` if absent."""
    if not text:
        return None
    start = text.rfind(_BOXED)
    while start != -1:
        depth, pos = 1, start + len(_BOXED)
        while pos < len(text):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                return text[start + len(_BOXED) : pos].strip()
            pos += 1
        start = text.rfind(_BOXED, 0, start)  # unclosed: fall back to an earlier, closed one
    return None


_CHOICE = re.compile(r"^\(?([A-Za-z])\)?(?:[.:)]|\s|$)")


def extract_choice(text: str | None, options: str = "ABC") -> str | None:
    """The option letter answered in ``\\boxed{}`` (``A``, ``(A)``, ``A. Action Success``), or ``None``."""
    boxed = extract_boxed(text)
    if boxed is None:
        return None
    match = _CHOICE.match(boxed)
    if match is None or match.group(1).upper() not in options:
        return None
    return match.group(1).upper()


def format_ok(text: str | None, require_think: bool) -> bool:
    """Whether ``text`` is well formed: ``<think>`` tags open and close in turn without nesting, a ``\\boxed{}``
    answer comes after the last ``</think>``, and, when ``require_think``, there is at least one reasoning block.
    Latent blocks (``<output_image>`` or latent tokens) may appear anywhere outside the reasoning blocks.
    """
    if not text or extract_boxed(text) is None:
        return False
    tags = re.findall(r"</?think>", text)
    if any(tag != (THINK_OPEN if i % 2 == 0 else THINK_CLOSE) for i, tag in enumerate(tags)) or len(tags) % 2:
        return False
    if require_think and not tags:
        return False
    for block in re.findall(r"<think>(.*?)</think>", text, flags=re.S):
        if LATENT_PLACEHOLDER in block or _BOXED in block:
            return False
    return text.rfind(_BOXED) > text.rfind(THINK_CLOSE)


def planning_outcome(text: str | None, map_desc: MapDesc) -> Outcome:
    """The outcome of the plan answered in ``text`` (see :func:`mirage_tasks.vsp.simulate_plan`); ``invalid`` if none."""
    return simulate_plan(map_desc, extract_boxed(text))


def score_planning(completion_text: str | None, map_desc: MapDesc) -> float:
    """1.0 when the boxed plan reaches the goal of ``map_desc`` without falling into a hole, else 0.0."""
    return float(planning_outcome(completion_text, map_desc) == "success")


def score_choice(completion_text: str | None, answer: str) -> float:
    """1.0 when the boxed option letter equals ``answer``, else 0.0."""
    return float(extract_choice(completion_text, options="ABCDEFGH") == answer.strip().upper())


def score_format(completion_text: str | None, require_think: bool) -> float:
    """:func:`format_ok` as a float reward."""
    return float(format_ok(completion_text, require_think))


# ---------------------------------------------------------------------------------------------------------
# Templated reasoning checks: parse each clause and replay it on the map, independently of how it was written.
# ---------------------------------------------------------------------------------------------------------
_CELL = r"\((\d+),(\d+)\)"
_PLAN_START = re.compile(rf"Start {_CELL}, goal {_CELL}\.")
_PLAN_MOVE = re.compile(rf"\b([{''.join(MOVE_LETTERS)}]) to {_CELL}\.")
_REASON_MOVE = re.compile(
    rf"\b({'|'.join(MOVE_WORDS)}) (?:to {_CELL} ({'|'.join(TILE_WORDS.values())})|blocked at {_CELL})\."
)
_JIG_GAP = re.compile(rf"Gap at {_CELL}: row color (\w+), column shape (\w+)\.")
_JIG_PIECE = re.compile(r"\b([AB]) is a (\w+) (\w+)\.")
_JIG_FIT = re.compile(r"\b([AB]) fits\.")
_TILE_CODE = {v: k for k, v in TILE_WORDS.items()}


def _reasoning(text: str) -> str:
    return " ".join(re.findall(r"<think>(.*?)</think>", text, flags=re.S))


def planning_trace_errors(text: str, map_desc: MapDesc) -> list[str]:
    """Problems with a templated planning reasoning (empty list = correct for this map)."""
    grid = validate_map_desc(map_desc)
    thought, errors = _reasoning(text), []
    start = _PLAN_START.search(thought)
    if start is None:
        errors.append("no start/goal clause")
    else:
        said = tuple(map(int, start.groups()))
        if said[:2] != find_cell(grid, START) or said[2:] != find_cell(grid, GOAL):
            errors.append(f"start/goal clause {start.group(0)!r} does not match the map")
    cell, moves = find_cell(grid, START), ""
    for match in _PLAN_MOVE.finditer(thought):
        move, claimed = match.group(1), (int(match.group(2)), int(match.group(3)))
        cell = step(grid, cell, move)
        moves += move
        if claimed != cell:
            errors.append(f"{match.group(0)!r}: the move lands on {cell}")
        if grid[cell] == HOLE:
            errors.append(f"{match.group(0)!r} walks into a hole")
    if grid[cell] != GOAL or PLANNING_END_CLAUSE not in thought:
        errors.append("the reasoning does not end on the goal")
    if parse_moves(extract_boxed(text)) != moves:
        errors.append(f"boxed answer {extract_boxed(text)!r} differs from the reasoned moves {moves!r}")
    return errors


def spatial_reasoning_trace_errors(text: str, map_desc: MapDesc, plan: str) -> list[str]:
    """Problems with a templated spatial-reasoning trace of ``plan`` (``"RIGHT, UP"``) on ``map_desc``."""
    grid = validate_map_desc(map_desc)
    letters = parse_moves(plan) or ""
    steps = trace_plan(grid, letters)
    thought, errors = _reasoning(text), []
    clauses = list(_REASON_MOVE.finditer(thought))
    if len(clauses) != len(steps):
        errors.append(f"{len(clauses)} move clauses for {len(steps)} moves played")
    for match, s in zip(clauses, steps):
        word, r, c, tile, br, bc = match.groups()
        if WORD_TO_LETTER[word] != s.move:
            errors.append(f"{match.group(0)!r}: the plan moves {s.move}")
        elif tile is not None and (s.blocked or (int(r), int(c)) != s.cell or _TILE_CODE[tile] != s.code):
            errors.append(f"{match.group(0)!r}: the move {'is blocked' if s.blocked else f'lands on {s.cell}'}")
        elif tile is None and (not s.blocked or (int(br), int(bc)) != s.cell):
            errors.append(f"{match.group(0)!r}: the move is not blocked")
    truth = REASONING_OPTIONS[outcome_of(steps)]
    if REASONING_END_CLAUSES[truth] not in thought:
        errors.append(f"the conclusion does not say {REASONING_END_CLAUSES[truth]!r}")
    if extract_choice(text) != truth:
        errors.append(f"boxed answer {extract_boxed(text)!r} is not {truth}")
    return errors


def jigsaw_trace_errors(text: str, answer: str) -> list[str]:
    """Problems with a templated jigsaw reasoning: the fitting piece must be the gap's color and shape, the other
    piece must differ, and the boxed answer must be the fitting piece (which must be ``answer``)."""
    thought, errors = _reasoning(text), []
    gap, fit = _JIG_GAP.search(thought), _JIG_FIT.search(thought)
    pieces = {m.group(1): m.group(2, 3) for m in _JIG_PIECE.finditer(thought)}
    if gap is None or fit is None or set(pieces) != {"A", "B"}:
        return ["missing gap, piece or fit clause"]
    wanted = gap.group(3, 4)
    chosen, other = fit.group(1), "B" if fit.group(1) == "A" else "A"
    if pieces[chosen] != wanted or pieces[other] == wanted:
        errors.append(f"{fit.group(0)!r} does not follow from the gap {wanted} and pieces {pieces}")
    if chosen != answer or extract_choice(text, "AB") != answer:
        errors.append(f"the reasoning or the boxed answer does not pick {answer}")
    return errors


def row_errors(row: dict[str, Any], text: str | None = None) -> list[str]:
    """Everything wrong with a canonical row's completion (``text`` defaults to the row's own completion).

    Checks the answer against the simulator, the number of latent placeholders against the helper images, the
    format, and for reasoning variants the templated reasoning clause by clause.
    """
    from .dataset import completion_text

    text = completion_text(row) if text is None else text
    task, variant, errors = row["task"], row["variant"], []
    think_needed = variant.endswith("cot")
    if text.count(LATENT_PLACEHOLDER) != len(row["helper_images"]):
        errors.append(f"{text.count(LATENT_PLACEHOLDER)} latent placeholders for {len(row['helper_images'])} helpers")
    if not format_ok(text, require_think=think_needed):
        errors.append("format check failed")
    if task == "vsp_planning":
        outcome = planning_outcome(text, row["map_desc"])
        if outcome != "success":
            errors.append(f"planning answer ends in {outcome}")
        if think_needed:
            errors += planning_trace_errors(text, row["map_desc"])
    elif task == "vsp_reasoning":
        truth = REASONING_OPTIONS[simulate_plan(row["map_desc"], row["plan"])]
        if row["answer"] != truth or extract_choice(text) != truth:
            errors.append(f"answer {row['answer']!r} / boxed {extract_boxed(text)!r} but the plan gives {truth}")
        if think_needed:
            errors += spatial_reasoning_trace_errors(text, row["map_desc"], row["plan"])
    else:
        if extract_choice(text, "AB") != row["answer"]:
            errors.append(f"boxed {extract_boxed(text)!r} is not {row['answer']}")
        if think_needed:
            errors += jigsaw_trace_errors(text, row["answer"])
    return errors


# ---------------------------------------------------------------------------------------------------------
# Scoring predictions for the evaluation runner
# ---------------------------------------------------------------------------------------------------------
def score_row(row: dict[str, Any], text: str | None) -> dict[str, Any]:
    """Score one prediction against a canonical row.

    Returns:
        ``{"outcome", "correct", "valid", "format"}``: ``outcome`` is the simulator outcome for planning
        (``success``/``hole``/``not_at_goal``/``invalid``) and the extracted letter (or ``invalid``) otherwise.
    """
    task = row["task"]
    if task == "vsp_planning":
        outcome = planning_outcome(text, row["map_desc"])
        correct = outcome == "success"
    else:
        letter = extract_choice(text, "ABC" if task == "vsp_reasoning" else "AB")
        outcome = letter or "invalid"
        correct = letter == row["answer"]
    return {
        "outcome": outcome,
        "correct": bool(correct),
        "valid": outcome != "invalid",
        "format": format_ok(text, require_think=str(row.get("variant", "")).endswith("cot")),
    }


def evaluate_predictions(rows: Iterable[dict[str, Any]], predictions: Sequence[str | None]) -> dict[str, Any]:
    """Score predictions for rows of a canonical dataset (any mix of tasks), in order.

    Returns:
        ``n``, ``success_rate`` (fraction correct), ``invalid_rate``, ``format_rate``, ``per_level`` and
        ``per_task`` success rates, ``outcomes`` (count per outcome) and ``scores`` (per-row dicts of
        :func:`score_row`).
    """
    rows = list(rows)
    if len(rows) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    scores = [score_row(row, text) for row, text in zip(rows, predictions)]
    correct = [s["correct"] for s in scores]
    outcomes: dict[str, int] = defaultdict(int)
    for s in scores:
        outcomes[s["outcome"]] += 1
    return {
        "n": len(rows),
        "success_rate": rate(correct),
        "invalid_rate": rate(not s["valid"] for s in scores),
        "format_rate": rate(s["format"] for s in scores),
        "per_level": rates_by(correct, [int(row["level"]) for row in rows]),
        "per_task": rates_by(correct, [row["task"] for row in rows]),
        "outcomes": dict(outcomes),
        "scores": scores,
    }


def rate(flags: Iterable[bool]) -> float:
    """The fraction of true flags (0.0 for none)."""
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def rates_by(flags: Iterable[bool], groups: Iterable[Any]) -> dict[Any, float]:
    """The fraction of true flags within each group (e.g. success per level), groups in sorted order.

    ``flags`` and ``groups`` are paired in order; the shorter one decides how many pairs count.
    """
    grouped: dict[Any, list[bool]] = defaultdict(list)
    for flag, group in zip(flags, groups):
        grouped[group].append(bool(flag))
    return {group: rate(values) for group, values in sorted(grouped.items())}
