"""The four training variants of the paper's comparison, and how each one lays out a completion.

Every task produces its answer as two lists of reasoning clauses (before and after the point where the helper
image belongs) plus the answer; a variant decides which of these parts the assistant text carries:

==============  ===================================================================================
``direct``      ``The answer is \\boxed{X}.``
``cot``         ``<think> pre... post... </think>The answer is \\boxed{X}.``
``mirage-direct`` ``<output_image>The answer is \\boxed{X}.``
``mirage-cot``  ``<think> pre... </think><output_image><think> post... </think>The answer is \\boxed{X}.``
==============  ===================================================================================

The ``mirage-*`` variants carry one latent placeholder and one helper image; the others carry neither.
"""

from __future__ import annotations

from .errors import UnknownNameError
from .templates import COT_SUFFIX, DIRECT_SUFFIX, LATENT_PLACEHOLDER, answer_line, think

VARIANTS: tuple[str, ...] = ("direct", "cot", "mirage-direct", "mirage-cot")
"""Training variants, in the order of the paper's comparison table."""


def check_variant(variant: str) -> str:
    """Return ``variant`` unchanged, or raise :class:`UnknownNameError` listing the known variants."""
    if variant not in VARIANTS:
        raise UnknownNameError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return variant


def uses_latent(variant: str) -> bool:
    """Whether completions of ``variant`` contain a latent block (and rows carry a helper image)."""
    return check_variant(variant).startswith("mirage")


def uses_reasoning(variant: str) -> bool:
    """Whether completions of ``variant`` contain ``<think>`` reasoning (and prompts ask for it)."""
    return check_variant(variant).endswith("cot")


def prompt_suffix(variant: str) -> str:
    """The official instruction sentence(s) closing the prompt: answer-only or think-then-answer."""
    return COT_SUFFIX if uses_reasoning(variant) else DIRECT_SUFFIX


def compose_completion(variant: str, pre: list[str], post: list[str], answer: str) -> str:
    """Lay out the assistant text of ``variant`` from reasoning clauses and the answer.

    Args:
        variant: one of :data:`VARIANTS`.
        pre: clauses that come before the helper image (what leads up to the imagined picture).
        post: clauses that come after it (what can be read off the imagined picture).
        answer: the text to put in ``\\boxed{}``.
    """
    check_variant(variant)
    final = answer_line(answer)
    if variant == "direct":
        return final
    if variant == "mirage-direct":
        return LATENT_PLACEHOLDER + final
    if variant == "cot":
        return think(pre + post) + final
    text = (think(pre) if pre else "") + LATENT_PLACEHOLDER
    return text + (think(post) if post else "") + final
