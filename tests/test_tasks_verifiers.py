"""Verifiers: simulation, extraction, format checks, reasoning checks, and agreement with BFS on every map."""

import random

import pytest

import mirage_tasks
from mirage_tasks.errors import TaskDataError
from mirage_tasks.verifiers import (
    jigsaw_trace_errors,
    planning_trace_errors,
    row_errors,
    spatial_reasoning_trace_errors,
)
from mirage_tasks.vsp import parse_moves, random_map

# S . H
# . H .
# . . G
MAP = [[1, 0, -1], [0, -1, 0], [0, 0, 2]]


@pytest.mark.parametrize(
    ("moves", "outcome"),
    [
        ("DDRR", "success"),
        ("D, D, R, R", "success"),
        ("down down right right", "success"),
        ("DOWN, DOWN, RIGHT, RIGHT", "success"),
        ("LLUUDDRR", "success"),  # moves off the edge do nothing
        ("DDRRU", "success"),  # the goal is terminal: later moves are not played
        ("RR", "hole"),
        ("DR", "hole"),
        ("RRDD", "hole"),  # the hole comes first
        ("R", "not_at_goal"),
        ("UUU", "not_at_goal"),
        ("DDR", "not_at_goal"),
        ("", "invalid"),
        (None, "invalid"),
        ("go right", "invalid"),
        ("DDRX", "invalid"),
        ("1234", "invalid"),
    ],
)
def test_simulate_plan_hand_cases(moves, outcome):
    assert mirage_tasks.simulate_plan(MAP, moves) == outcome


def test_parse_moves_normalises_to_letters():
    assert parse_moves(" l, Right ->u  D ") == "LRUD"
    assert parse_moves("LEFTRIGHT") == "LR"
    assert parse_moves("L R Q") is None


def test_solve_map_is_shortest_and_rejects_unsolvable_maps():
    assert mirage_tasks.solve_map(MAP) == "DDRR"
    assert mirage_tasks.solve_map([[2, 1, 0]]) == "L"
    with pytest.raises(TaskDataError, match="field 'map_desc': the goal cannot be reached"):
        mirage_tasks.solve_map([[1, -1, 2], [0, -1, 0]])


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        ("The answer is \\boxed{DDRR}.", "DDRR"),
        ("\\boxed{A} then \\boxed{ B }", "B"),
        ("\\boxed{\\text{L}}", "\\text{L}"),
        ("\\boxed{A} and an unclosed \\boxed{B", "A"),
        ("no box", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text, boxed):
    assert mirage_tasks.extract_boxed(text) == boxed


@pytest.mark.parametrize(
    ("text", "letter"),
    [("\\boxed{B}", "B"), ("\\boxed{(c)}", "C"), ("\\boxed{A. Action Success}", "A"), ("\\boxed{D}", None),
     ("\\boxed{Apple}", None), ("B", None)],
)  # fmt: skip
def test_extract_choice(text, letter):
    assert mirage_tasks.extract_choice(text, "ABC") == letter


@pytest.mark.parametrize(
    ("text", "require_think", "ok"),
    [
        ("The answer is \\boxed{A}.", False, True),
        ("The answer is \\boxed{A}.", True, False),
        ("<think> x </think>The answer is \\boxed{A}.", True, True),
        ("<think> x </think><output_image><think> y </think>\\boxed{A}", True, True),
        ("<output_image>The answer is \\boxed{A}.", False, True),
        ("<think> x <think> y </think></think>\\boxed{A}", True, False),  # nested
        ("<think> x \\boxed{A}", True, False),  # unclosed
        ("\\boxed{A}<think> x </think>", True, False),  # answer before the reasoning ends
        ("<think> \\boxed{A} </think>", True, False),  # answer inside reasoning
        ("<think> x </think>The answer is A.", True, False),  # no box
        ("", False, False),
    ],
)
def test_format_ok(text, require_think, ok):
    assert mirage_tasks.format_ok(text, require_think=require_think) is ok


def test_scores():
    assert mirage_tasks.score_planning("<think> a </think>\\boxed{DDRR}", MAP) == 1.0
    assert mirage_tasks.score_planning("\\boxed{RR}", MAP) == 0.0
    assert mirage_tasks.score_planning("DDRR", MAP) == 0.0  # not boxed: invalid
    assert mirage_tasks.score_choice("\\boxed{(B)}", "B") == 1.0
    assert mirage_tasks.score_choice("\\boxed{C}", "B") == 0.0
    assert mirage_tasks.score_format("\\boxed{C}", require_think=False) == 1.0


def test_bfs_answer_succeeds_on_every_official_map():
    maps = mirage_tasks.official_test_maps()
    assert len(maps) == 400
    assert all(mirage_tasks.score_planning(f"\\boxed{{{mirage_tasks.solve_map(m)}}}", m) == 1.0 for m in maps)


def test_bfs_answer_succeeds_on_generated_maps_of_every_level():
    rng = random.Random(0)
    for side in range(3, 9):
        for _ in range(100):
            map_desc = random_map(rng, side)
            assert mirage_tasks.simulate_plan(map_desc, mirage_tasks.solve_map(map_desc)) == "success"


def _completion(task, variant, seed=0):
    row = mirage_tasks.make_examples(task, variant, 1, levels=5, seed=seed)[0]
    return row, mirage_tasks.completion_text(row)


def test_planning_reasoning_check_catches_each_kind_of_mistake():
    row, text = _completion("vsp_planning", "cot")
    assert planning_trace_errors(text, row["map_desc"]) == []
    first_move = text.split("). ")[1].split(" to ")[0]  # e.g. "D"
    wrong_start = text.replace("Start (", "Start (7", 1)
    wrong_cell = text.replace(f"{first_move} to (", f"{first_move} to (9", 1)
    wrong_box = text.replace(f"\\boxed{{{row['answer']}", "\\boxed{" + row["answer"][:-1])
    no_end = text.replace(" Goal reached.", "")
    for bad in (wrong_start, wrong_cell, wrong_box, no_end):
        assert planning_trace_errors(bad, row["map_desc"]), bad


def test_spatial_reasoning_trace_check_catches_each_kind_of_mistake():
    for seed in range(3):
        row, text = _completion("vsp_reasoning", "cot", seed)
        assert spatial_reasoning_trace_errors(text, row["map_desc"], row["plan"]) == []
        for old, new in [(" ice.", " hole."), (" to (", " to (9"), ("\\boxed{", "\\boxed{Z")]:
            if old in text:
                assert spatial_reasoning_trace_errors(text.replace(old, new, 1), row["map_desc"], row["plan"])
        wrong_end = text
        for end in ("Ends on the goal.", "Fell in a hole.", "Safe, not at the goal."):
            wrong_end = wrong_end.replace(end, "Ends nowhere.")
        assert spatial_reasoning_trace_errors(wrong_end, row["map_desc"], row["plan"])


def test_jigsaw_reasoning_check_catches_a_wrong_pick():
    row, text = _completion("jigsaw", "cot")
    assert jigsaw_trace_errors(text, row["answer"]) == []
    other = "B" if row["answer"] == "A" else "A"
    assert jigsaw_trace_errors(text.replace(f"{row['answer']} fits.", f"{other} fits."), row["answer"])
    assert jigsaw_trace_errors(text, other)


def test_row_errors_flags_placeholder_mismatch_and_wrong_answers():
    row = mirage_tasks.make_examples("vsp_planning", "mirage-direct", 1, seed=1)[0]
    assert row_errors(row) == []
    assert any("placeholders" in e for e in row_errors({**row, "helper_images": []}))
    assert any("ends in" in e for e in row_errors(row, "<output_image>The answer is \\boxed{U}."))


def test_evaluate_predictions_summarises_by_level_and_task():
    rows = mirage_tasks.make_examples("vsp_planning", "direct", 4, levels="3-4") + mirage_tasks.make_examples(
        "vsp_reasoning", "direct", 3, levels=3
    )
    preds = [mirage_tasks.completion_text(r) for r in rows]
    preds[0] = "no answer"
    preds[4] = "\\boxed{" + ("B" if rows[4]["answer"] != "B" else "C") + "}"
    summary = mirage_tasks.evaluate_predictions(rows, preds)
    assert summary["n"] == 7
    assert summary["success_rate"] == pytest.approx(5 / 7)
    assert summary["invalid_rate"] == pytest.approx(1 / 7)
    assert summary["per_task"] == {"vsp_planning": 0.75, "vsp_reasoning": pytest.approx(2 / 3)}
    assert summary["per_level"][4] == 1.0
    assert summary["outcomes"]["invalid"] == 1
