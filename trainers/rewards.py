"""Rewards for stage 3 (GRPO) on the imagery tasks, with TRL's batch signature.

Every reward is `f(completions, **columns) -> list[float | None]`: `completions` are the rollouts (TRL passes
conversational ones as `[{"role": "assistant", "content": text}]`, plain ones as strings) and the keyword arguments are
the dataset's columns, one value per rollout (`task`, `variant`, `answer`, `map_desc`, ...). A reward returns `None`
for a row whose task it does not score; TRL then leaves it out of that reward's sum and statistics.

[`MirageGRPOTrainer`] shows each latent block of a completion as the official placeholder `<output_image>`, so
the text a reward reads has the same layout as the training targets (`<output_image>The answer is \\boxed{R}.`).

The paper's reward is `0.9 * accuracy + 0.1 * format`: [`DEFAULT_REWARDS`] with [`DEFAULT_REWARD_WEIGHTS`]. Recipes
name rewards through [`REWARDS`] (see [`get_reward_funcs`]).

Scoring reuses the task suite's verifiers (`mirage_tasks.verifiers`): a plan is simulated on the row's map, a
multiple-choice answer is the option letter in the last `\\boxed{}`, the format is checked by `format_ok` plus the
variant's latent-block layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mirage_tasks import LATENT_PLACEHOLDER, TASKS, VARIANTS
from mirage_tasks.verifiers import extract_boxed, extract_choice, format_ok, planning_outcome

RewardFunc = Callable[..., list[float | None]]

# Option letters of the multiple-choice tasks.
CHOICE_OPTIONS = {"vsp_reasoning": "ABC", "jigsaw": "AB"}
_BOXED = "\\boxed{"


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of one rollout: a string as is, or the concatenated text of a list of messages (string contents, or
    the text parts of structured contents)."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif content:
            parts.extend(part.get("text") or "" for part in content if part.get("type") == "text")
    return "".join(parts)


def _column(columns: dict[str, Any], name: str, reward: str, n: int) -> list[Any]:
    values = columns.get(name)
    if values is None:
        raise ValueError(
            f"reward {reward!r} needs the dataset column {name!r}, which the batch lacks (columns: {sorted(columns)}); "
            "use rows of the task suite (mirage_tasks.build_dataset) or add the column"
        )
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: column {name!r} has {len(values)} values for {n} completions")
    return list(values)


def _task_of(task: str, row: int, reward: str) -> str:
    if task not in TASKS:
        raise ValueError(f"reward {reward!r}: row {row} has task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def planning_success(completions: list, task: list[str] | None = None, map_desc=None, **columns) -> list:
    """1.0 when the boxed plan, simulated on the row's map, reaches the goal without a hole; else 0.0. `None` for rows
    that are not `vsp_planning`."""
    n = len(completions)
    columns.update(task=task, map_desc=map_desc)
    tasks, maps = _column(columns, "task", "planning_success", n), _column(columns, "map_desc", "planning_success", n)
    rewards: list[float | None] = []
    for row, (completion, row_task, grid) in enumerate(zip(completions, tasks, maps)):
        if _task_of(row_task, row, "planning_success") != "vsp_planning":
            rewards.append(None)
            continue
        rewards.append(float(planning_outcome(completion_text(completion), grid) == "success"))
    return rewards


def choice_accuracy(completions: list, task: list[str] | None = None, answer=None, **columns) -> list:
    """1.0 when the option letter in the last `\\boxed{}` equals the row's `answer`; else 0.0. `None` for rows that
    are not multiple-choice tasks (`vsp_reasoning`, `jigsaw`)."""
    n = len(completions)
    columns.update(task=task, answer=answer)
    tasks, answers = _column(columns, "task", "choice_accuracy", n), _column(columns, "answer", "choice_accuracy", n)
    rewards: list[float | None] = []
    for row, (completion, row_task, gold) in enumerate(zip(completions, tasks, answers)):
        options = CHOICE_OPTIONS.get(_task_of(row_task, row, "choice_accuracy"))
        if options is None:
            rewards.append(None)
            continue
        rewards.append(float(extract_choice(completion_text(completion), options) == str(gold).strip().upper()))
    return rewards


def accuracy(completions: list, **columns) -> list:
    """The task's own accuracy on every row: planning success by simulation for `vsp_planning`, the option letter for
    the multiple-choice tasks."""
    n = len(completions)
    tasks = [_task_of(t, row, "accuracy") for row, t in enumerate(_column(columns, "task", "accuracy", n))]
    planning = planning_success(completions, **columns) if "vsp_planning" in tasks else [None] * n
    choice = choice_accuracy(completions, **columns) if any(t in CHOICE_OPTIONS for t in tasks) else [None] * n
    return [p if t == "vsp_planning" else c for p, c, t in zip(planning, choice, tasks)]


def layout_ok(text: str, variant: str) -> bool:
    """Whether `text` has the structure of `variant`'s completions (see `mirage_tasks.variants`):

    * exactly one `\\boxed{}` answer, after any reasoning, and well-formed `<think>` spans (`format_ok`), at least one
      for the CoT variants;
    * `mirage-*`: exactly one latent block (`<output_image>`), outside the reasoning and before the answer, and for
      `mirage-direct` first of all; `direct` and `cot`: no latent block.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if text.count(_BOXED) != 1 or extract_boxed(text) is None:
        return False
    if not format_ok(text, require_think=variant.endswith("cot")):
        return False
    blocks = text.count(LATENT_PLACEHOLDER)
    if not variant.startswith("mirage"):
        return blocks == 0
    if blocks != 1 or text.find(LATENT_PLACEHOLDER) > text.find(_BOXED):
        return False
    return variant != "mirage-direct" or text.lstrip().startswith(LATENT_PLACEHOLDER)


def format_reward(completions: list, variant: list[str] | None = None, **columns) -> list:
    """1.0 when a completion has its variant's structure ([`layout_ok`]), else 0.0."""
    columns.update(variant=variant)
    variants = _column(columns, "variant", "format", len(completions))
    return [float(layout_ok(completion_text(c), v)) for c, v in zip(completions, variants)]


REWARDS: dict[str, RewardFunc] = {
    "accuracy": accuracy,
    "planning_success": planning_success,
    "choice_accuracy": choice_accuracy,
    "format": format_reward,
}
"""Rewards by the name recipes use (`reward_funcs: [accuracy, format]`)."""

DEFAULT_REWARDS: tuple[str, ...] = ("accuracy", "format")
DEFAULT_REWARD_WEIGHTS: tuple[float, ...] = (0.9, 0.1)
"""The paper's stage-3 reward: 0.9 x accuracy + 0.1 x format."""


def get_reward_funcs(names: Sequence[str | RewardFunc]) -> list[RewardFunc]:
    """Reward functions for `names` (registry names of [`REWARDS`], or callables passed through); a `ValueError`
    lists the known names for an unknown one."""
    funcs = []
    for name in names:
        if callable(name):
            funcs.append(name)
        elif name in REWARDS:
            funcs.append(REWARDS[name])
        else:
            raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}")
    return funcs


__all__ = [
    "DEFAULT_REWARDS",
    "DEFAULT_REWARD_WEIGHTS",
    "REWARDS",
    "accuracy",
    "choice_accuracy",
    "completion_text",
    "format_reward",
    "get_reward_funcs",
    "layout_ok",
    "planning_success",
]
