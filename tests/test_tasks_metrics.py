"""The evaluate metric modules load from a local path and agree with the verifiers."""

import evaluate
import pytest

import mirage_tasks


@pytest.fixture(scope="module")
def planning_metric():
    return evaluate.load(mirage_tasks.VSP_PLANNING_METRIC)


@pytest.fixture(scope="module")
def choice_metric():
    return evaluate.load(mirage_tasks.MULTIPLE_CHOICE_METRIC)


def test_planning_metric_reports_outcome_rates_and_levels(planning_metric):
    map_a = [[1, 0, -1], [0, -1, 0], [0, 0, 2]]
    map_b = [[1, 2, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    result = planning_metric.compute(
        predictions=["<think> x </think>\\boxed{DDRR}", "\\boxed{RR}", "\\boxed{U}", "I give up", "\\boxed{R}"],
        references=[map_a, map_a, map_a, map_a, map_b],
        levels=[3, 3, 3, 3, 4],
    )
    assert result["success_rate"] == pytest.approx(0.4)
    assert result["hole_rate"] == pytest.approx(0.2)
    assert result["not_at_goal_rate"] == pytest.approx(0.2)
    assert result["invalid_rate"] == pytest.approx(0.2)
    assert result["per_level"] == {3: 0.25, 4: 1.0}


def test_planning_metric_accumulates_batches(planning_metric):
    rows = mirage_tasks.make_examples("vsp_planning", "direct", 6, levels="3-5")
    for row in rows:
        planning_metric.add_batch(predictions=[mirage_tasks.completion_text(row)], references=[row["map_desc"]])
    assert planning_metric.compute()["success_rate"] == 1.0


def test_choice_metric_matches_evaluate_predictions(choice_metric):
    rows = mirage_tasks.make_examples("vsp_reasoning", "cot", 9, levels="3-5")
    preds = [mirage_tasks.completion_text(r) for r in rows]
    preds[0], preds[1] = "\\boxed{(" + rows[0]["answer"] + ")}", "no box"
    preds[2] = "\\boxed{" + ("A" if rows[2]["answer"] != "A" else "B") + "}"
    result = choice_metric.compute(
        predictions=preds, references=[r["answer"] for r in rows], levels=[r["level"] for r in rows]
    )
    summary = mirage_tasks.evaluate_predictions(rows, preds)
    assert result["success_rate"] == pytest.approx(7 / 9) == summary["success_rate"]
    assert result["invalid_rate"] == pytest.approx(1 / 9) == summary["invalid_rate"]
    assert result["per_level"] == pytest.approx(summary["per_level"])
