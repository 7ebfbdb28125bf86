"""Multiple-choice metric for ``evaluate`` (VSP spatial reasoning A/B/C, jigsaw A/B).

Load it by path (no Hub access needed)::

    import evaluate, mirage_tasks
    metric = evaluate.load(mirage_tasks.MULTIPLE_CHOICE_METRIC)
    metric.compute(predictions=["<think> ... </think>The answer is \\\\boxed{B}."], references=["B"], levels=[4])

Scoring is :mod:`mirage_tasks.verifiers`' (letter extraction and per-level rates), imported rather than copied, so the
module runs wherever the ``mirage_tasks`` package is installed (also when loaded from a Hub copy of this folder).
"""

from __future__ import annotations

import datasets
import evaluate

from mirage_tasks.verifiers import extract_choice, rate, rates_by

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
        return {
            "success_rate": rate(correct),
            "invalid_rate": rate(letter is None for letter in letters),
            "per_level": rates_by(correct, [int(level) for level in levels or []]),
        }
