"""Multiple-choice metric for ``evaluate`` (VSP spatial reasoning A/B/C, jigsaw A/B).

Load it by path (no Hub access needed)::

    import evaluate, tasks
    metric = evaluate.load(mirage_tasks.MULTIPLE_CHOICE_METRIC)
    metric.compute(predictions=["<think> ... </think>The answer is \\\\boxed{B}."], references=["B"], levels=[4])
"""

from __future__ import annotations

from collections import defaultdict

import datasets
import evaluate

from mirage_tasks.verifiers import extract_choice

_DESCRIPTION = """Accuracy of option letters answered in \\boxed{} (A, (A) and "A. Action Success" all read as A).
A prediction without a readable letter in \\boxed{} counts as invalid (and wrong)."""

_KWARGS = """
Args:
    predictions: model outputs (str), answer in \\boxed{}.
    references: gold letters (str).
    levels: optional list of int for a per-level breakdown.
Returns:
    success_rate (accuracy), invalid_rate (floats in [0, 1]); per_level: {level: success_rate}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class MultipleChoice(evaluate.Metric):
    """Accuracy of the boxed option letter."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Yang et al., Machine Mental Imagery, arXiv:2506.17218",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, levels=None):
        letters = [extract_choice(p, options="ABCDEFGH") for p in predictions]
        correct = [letter == r.strip().upper() for letter, r in zip(letters, references)]
        n = max(len(correct), 1)
        per_level = defaultdict(list)
        for level, ok in zip(levels or [], correct):
            per_level[int(level)].append(ok)
        return {
            "success_rate": sum(correct) / n,
            "invalid_rate": sum(letter is None for letter in letters) / n,
            "per_level": {level: sum(v) / len(v) for level, v in sorted(per_level.items())},
        }
