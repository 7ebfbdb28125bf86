"""VSP spatial-planning metric for ``evaluate``: plans are simulated on their maps.

Load it by path (no Hub access needed)::

    import evaluate, tasks
    metric = evaluate.load(mirage_tasks.VSP_PLANNING_METRIC)
    metric.compute(predictions=["The answer is \\\\boxed{DR}."], references=[[[1, 0], [-1, 2]]], levels=[2])
"""

from __future__ import annotations

from collections import defaultdict

import datasets
import evaluate

from mirage_tasks.verifiers import planning_outcome

_DESCRIPTION = """Success rate of FrozenLake action plans: the last \\boxed{...} of each prediction is read as moves
(L/R/U/D or LEFT/RIGHT/UP/DOWN) and played on the reference map (map_desc: 1 start, 2 goal, -1 hole, 0 ice).
Moves off the edge do nothing; entering a hole fails; reaching the goal succeeds; an unreadable answer is invalid."""

_KWARGS = """
Args:
    predictions: model outputs (str), answer in \\boxed{}.
    references: the maps (list of rows of int codes).
    levels: optional list of int (e.g. map side length) for a per-level breakdown.
Returns:
    success_rate, invalid_rate, hole_rate, not_at_goal_rate (floats in [0, 1]); per_level: {level: success_rate}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class VspPlanning(evaluate.Metric):
    """Simulates each predicted plan on its map and reports outcome rates."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Yang et al., Machine Mental Imagery, arXiv:2506.17218",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
        )

    def _compute(self, predictions, references, levels=None):
        outcomes = [planning_outcome(p, m) for p, m in zip(predictions, references)]
        n = max(len(outcomes), 1)
        result = {
            f"{name}_rate": sum(o == name for o in outcomes) / n
            for name in ("success", "invalid", "hole", "not_at_goal")
        }
        per_level = defaultdict(list)
        for level, outcome in zip(levels or [], outcomes):
            per_level[int(level)].append(outcome == "success")
        result["per_level"] = {level: sum(v) / len(v) for level, v in sorted(per_level.items())}
        return result
