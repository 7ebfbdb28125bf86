"""The task-independent record every generator returns, before a variant lays it out as a dataset row."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Sample:
    """One generated problem with everything any variant needs.

    Attributes:
        key: a canonical string identifying the problem (the map, or the puzzle); equal keys are the same problem,
            which is how splits are kept disjoint.
        prompt_template: the user text with an ``<image>`` marker and a ``{suffix}`` slot for the instruction.
        image: the input picture.
        helper: draws the helper image (the picture to imagine) on demand, so answer-only variants skip the cost.
        pre: reasoning clauses before the point where the helper image belongs.
        post: reasoning clauses after it.
        answer: what goes in ``\\boxed{}``.
        level: map side length (VSP) or grid size (jigsaw).
        map_desc: the map for VSP tasks, empty for jigsaw.
        plan: the action plan of a reasoning problem (``"RIGHT, UP"``), else ``""``.
    """

    key: str
    prompt_template: str
    image: Image.Image
    helper: Callable[[], Image.Image]
    pre: list[str]
    post: list[str]
    answer: str
    level: int
    map_desc: list[list[int]] = field(default_factory=list)
    plan: str = ""
