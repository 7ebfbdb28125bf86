"""VSP spatial-planning metric for ``evaluate``: plans are simulated on their maps.

Load it by path (no Hub access needed)::

    import evaluate, mirage_tasks
    metric = evaluate.load(mirage_tasks.VSP_PLANNING_METRIC)
    metric.compute(predictions=["The answer is \\\\boxed{DR}."], references=[[[1, 0], [-1, 2]]], levels=[2])

Scoring is :mod:`mirage_tasks.verifiers`' (simulation and per-level rates), imported rather than copied, so the module
runs wherever the ``mirage_tasks`` package is installed (also when loaded from a Hub copy of this folder).
"""

from __future__ import annotations

import datasets
import evaluate

from mirage_tasks.verifiers import planning_outcome, rate, rates_by

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
        result = {
            f"{name}_rate": rate(o == name for o in outcomes) for name in ("success", "invalid", "hole", "not_at_goal")
        }
        result["per_level"] = rates_by((o == "success" for o in outcomes), [int(level) for level in levels or []])
        return result
