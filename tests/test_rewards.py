"""Stage-3 rewards: TRL's batch signature, `None` for rows of other tasks, scores from the task verifiers, the
variant's layout as the format reward, and the paper's 0.9 x accuracy + 0.1 x format by default."""

from __future__ import annotations

import pytest

import mirage_tasks
from trainers.rewards import (
    DEFAULT_REWARD_WEIGHTS,
    DEFAULT_REWARDS,
    REWARDS,
    accuracy,
    choice_accuracy,
    format_reward,
    get_reward_funcs,
    layout_ok,
    planning_success,
)

# A 3x3 map: start (0,0), goal (2,2), a hole at (1,1).
MAP = [[1, 0, 0], [0, -1, 0], [0, 0, 2]]


def as_messages(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_planning_success_simulates_the_boxed_plan():
    texts = [
        "<output_image>The answer is \\boxed{RRDD}.",  # success
        "<output_image>The answer is \\boxed{DR}.",  # hole at (1,1)
        "<output_image>The answer is \\boxed{R}.",  # safe, not at the goal
        "<output_image>The answer is RRDD.",  # no boxed answer: invalid
        "The answer is \\boxed{A}.",  # a reasoning row: not scored here
    ]
    columns = dict(task=["vsp_planning"] * 4 + ["vsp_reasoning"], map_desc=[MAP] * 5, answer=["RRDD"] * 4 + ["A"])
    assert planning_success([as_messages(t) for t in texts], **columns) == [1.0, 0.0, 0.0, 0.0, None]
    assert planning_success(texts, **columns) == [1.0, 0.0, 0.0, 0.0, None]  # plain-text completions too


def test_choice_accuracy_reads_the_option_letter():
    texts = ["\\boxed{B}", "\\boxed{(A)}", "\\boxed{A. Action Success}", "\\boxed{C}", "\\boxed{C}", "\\boxed{RR}"]
    columns = dict(
        task=["vsp_reasoning", "vsp_reasoning", "vsp_reasoning", "vsp_reasoning", "jigsaw", "vsp_planning"],
        answer=["B", "A", "A", "B", "A", "RR"],
    )
    assert choice_accuracy(texts, **columns) == [1.0, 1.0, 1.0, 0.0, 0.0, None]  # C is no jigsaw option


def test_accuracy_dispatches_by_task_and_names_a_missing_column():
    texts = ["\\boxed{RRDD}", "\\boxed{B}"]
    columns = dict(task=["vsp_planning", "vsp_reasoning"], map_desc=[MAP, []], answer=["RRDD", "B"])
    assert accuracy(texts, **columns) == [1.0, 1.0]
    with pytest.raises(ValueError, match="reward 'planning_success' needs the dataset column 'map_desc'"):
        accuracy(texts, task=["vsp_planning", "vsp_reasoning"], answer=["RRDD", "B"])
    with pytest.raises(ValueError, match="row 1 has task 'maze'"):
        accuracy(texts, task=["vsp_planning", "maze"], map_desc=[MAP, MAP], answer=["R", "R"])


@pytest.mark.parametrize(
    ("variant", "good", "bad"),
    [
        ("direct", "The answer is \\boxed{R}.", ["<output_image>The answer is \\boxed{R}.", "The answer is R."]),
        (
            "mirage-direct",
            "<output_image>The answer is \\boxed{R}.",
            [
                "The answer is \\boxed{R}.",  # no latent block
                "The answer is \\boxed{R}.<output_image>",  # block after the answer
                "<output_image><output_image>The answer is \\boxed{R}.",  # two blocks
                "<output_image>\\boxed{R} or \\boxed{D}",  # two answers
            ],
        ),
        (
            "cot",
            "<think> R to (0,1). Goal reached. </think>The answer is \\boxed{R}.",
            ["The answer is \\boxed{R}.", "<think> R </think><output_image>The answer is \\boxed{R}."],
        ),
        (
            "mirage-cot",
            "<think> Start (0,0), goal (0,1). </think><output_image><think> R to (0,1). </think>The answer is \\boxed{R}.",
            [
                "<think> Start. <output_image> </think>The answer is \\boxed{R}.",  # block inside reasoning
                "<output_image>The answer is \\boxed{R}.",  # no reasoning
                "<think> a </think><think> b </think>The answer is \\boxed{R}.",  # no block
            ],
        ),
    ],
)
def test_format_is_the_variants_layout(variant, good, bad):
    assert layout_ok(good, variant)
    assert not any(layout_ok(text, variant) for text in bad), [layout_ok(t, variant) for t in bad]
    assert format_reward([as_messages(good)] + [as_messages(t) for t in bad], variant=[variant] * (1 + len(bad))) == [
        1.0
    ] + [0.0] * len(bad)


def test_generated_targets_score_full_reward_in_every_variant():
    """The task suite's own completions earn accuracy 1 and format 1 in every variant and task."""
    for task in mirage_tasks.TASKS:
        for variant in mirage_tasks.VARIANTS:
            rows = mirage_tasks.make_examples(task, variant, 3, seed=1)
            completions = [row["completion"] for row in rows]
            columns = {key: [row[key] for row in rows] for key in ("task", "variant", "answer", "map_desc")}
            assert accuracy(completions, **columns) == [1.0] * 3, (task, variant)
            assert format_reward(completions, **columns) == [1.0] * 3, (task, variant)


def test_registry_and_the_papers_default():
    assert DEFAULT_REWARDS == ("accuracy", "format") and DEFAULT_REWARD_WEIGHTS == (0.9, 0.1)
    assert get_reward_funcs(["accuracy", "format"]) == [REWARDS["accuracy"], REWARDS["format"]]
    with pytest.raises(ValueError, match="unknown reward 'acc'; known rewards: accuracy, choice_accuracy, format"):
        get_reward_funcs(["acc"])
    texts = ["<output_image>The answer is \\boxed{RRDD}.", "The answer is \\boxed{RRDD}.", "\\boxed{DR}"]
    columns = dict(task=["vsp_planning"] * 3, variant=["mirage-direct"] * 3, map_desc=[MAP] * 3, answer=["RRDD"] * 3)
    scores = [get_reward_funcs([name])[0](texts, **columns) for name in DEFAULT_REWARDS]
    total = [sum(w * s[i] for w, s in zip(DEFAULT_REWARD_WEIGHTS, scores)) for i in range(3)]
    assert total == pytest.approx([1.0, 0.9, 0.0])
