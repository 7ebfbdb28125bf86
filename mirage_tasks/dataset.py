"""Canonical dataset rows and the generators' front door: :func:`make_examples`, :func:`build_dataset`, splits.

A canonical row is TRL's conversational prompt/completion form plus the fields verifiers need::

    id             "vsp_planning-0-00017"
    prompt         [{"role": "user", "content": [{"type": "text", "text": "...map: "},
                                                 {"type": "image", "text": None},
                                                 {"type": "text", "text": "\\n\\nPlease provide ..."}]}]
    completion     [{"role": "assistant", "content": [{"type": "text", "text": "<output_image>The answer is ..."}]}]
    images         [input picture]                   (datasets Image feature)
    helper_images  [picture to imagine] or []        (one per <output_image> in the completion)
    task, variant  "vsp_planning", "mirage-direct"
    answer         gold move string (planning) or "A"/"B"/"C" (reasoning, jigsaw)
    level          map side length, or jigsaw grid size
    map_desc       the map (empty for jigsaw)
    plan           the action plan of a reasoning problem ("RIGHT, UP"), else ""
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Sequence
from typing import Any

import datasets
from PIL import Image
from tqdm.auto import tqdm

from . import jigsaw, vsp_planning, vsp_reasoning
from .errors import LevelError, TaskDataError, UnknownNameError
from .sample import Sample
from .templates import IMAGE_MARKER, JIGSAW_COLORS, LATENT_PLACEHOLDER
from .variants import check_variant, compose_completion, prompt_suffix, uses_latent
from .vsp import MAX_SIDE, MIN_SIDE, map_key, validate_map_desc

TASKS: tuple[str, ...] = ("vsp_planning", "vsp_reasoning", "jigsaw")
"""Task names, in the order of the docs."""

LEVEL_RANGE: dict[str, tuple[int, int]] = {
    "vsp_planning": (MIN_SIDE, MAX_SIDE),
    "vsp_reasoning": (MIN_SIDE, MAX_SIDE),
    "jigsaw": (3, len(JIGSAW_COLORS)),
}
"""Inclusive range of levels each task can generate (map side length, or jigsaw grid size)."""

DEFAULT_LEVELS: tuple[int, ...] = (3, 4, 5, 6)
"""The levels of the official VSP test set."""

_MODULES = {"vsp_planning": vsp_planning, "vsp_reasoning": vsp_reasoning, "jigsaw": jigsaw}

_MESSAGE = [{"role": datasets.Value("string"), "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}]  # fmt: skip
FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "prompt": _MESSAGE,
        "completion": _MESSAGE,
        "images": datasets.List(datasets.Image()),
        "helper_images": datasets.List(datasets.Image()),
        "task": datasets.Value("string"),
        "variant": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "level": datasets.Value("int32"),
        "map_desc": datasets.List(datasets.List(datasets.Value("int32"))),
        "plan": datasets.Value("string"),
    }
)
"""The Arrow schema of every canonical dataset (generated or read from official files)."""


# ---------------------------------------------------------------------------------------------------------
# Names and levels
# ---------------------------------------------------------------------------------------------------------
def check_task(task: str) -> str:
    """Return ``task`` unchanged, or raise :class:`UnknownNameError` listing the known tasks."""
    if task not in TASKS:
        raise UnknownNameError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return task


def parse_levels(levels: int | str | Iterable[int], task: str = "vsp_planning") -> tuple[int, ...]:
    """Normalise levels given as ``5``, ``"3-6"``, ``"3,5,8"`` or ``[3, 4]`` and check them against the task's range.

    Raises:
        LevelError: a level outside :data:`LEVEL_RANGE` for ``task``, or an unreadable specification.
    """
    check_task(task)
    if isinstance(levels, str):
        try:
            values: list[int] = []
            for part in levels.replace(" ", "").split(","):
                lo, _, hi = part.partition("-")
                values.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise LevelError(f"cannot read levels {levels!r}; write e.g. '3-6' or '3,5,8'") from None
    elif isinstance(levels, int):
        values = [levels]
    else:
        values = [int(v) for v in levels]
    lo, hi = LEVEL_RANGE[task]
    bad = [v for v in values if not lo <= v <= hi]
    if not values or bad:
        raise LevelError(f"{task} levels must lie in {lo}-{hi}; got {bad or 'none'}")
    return tuple(sorted(set(values)))


# ---------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------
def user_message(text: str) -> list[dict[str, Any]]:
    """The prompt column for a user text: one image item wherever the text has ``<image>``, text parts around it."""
    content: list[dict[str, Any]] = []
    for i, part in enumerate(text.split(IMAGE_MARKER)):
        if i:
            content.append({"type": "image", "text": None})
        if part:
            content.append({"type": "text", "text": part})
    return [{"role": "user", "content": content}]


def assistant_message(text: str) -> list[dict[str, Any]]:
    """The completion column for an assistant text."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def message_text(messages: Sequence[dict[str, Any]]) -> str:
    """Flatten messages back to text, writing ``<image>`` for each image item (inverse of :func:`user_message`)."""
    return "".join(
        IMAGE_MARKER if item["type"] == "image" else (item["text"] or "")
        for message in messages
        for item in message["content"]
    )


def prompt_text(row: dict[str, Any]) -> str:
    """The user text of a row, with ``<image>`` markers."""
    return message_text(row["prompt"])


def completion_text(row: dict[str, Any]) -> str:
    """The assistant text of a row (``""`` when it has no completion, e.g. a test row)."""
    return message_text(row["completion"])


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------
def to_row(sample: Sample, task: str, variant: str, row_id: str) -> dict[str, Any]:
    """Lay out a generated :class:`~mirage_tasks.sample.Sample` as a canonical row of ``variant``."""
    text = sample.prompt_template.replace("{suffix}", prompt_suffix(variant))
    completion = compose_completion(variant, sample.pre, sample.post, sample.answer)
    helpers = [sample.helper()] if uses_latent(variant) else []
    if completion.count(LATENT_PLACEHOLDER) != len(helpers):
        raise TaskDataError(
            f"{completion.count(LATENT_PLACEHOLDER)} {LATENT_PLACEHOLDER} placeholders for {len(helpers)} helper"
            f" images: a reasoning clause of the {task} generator contains {LATENT_PLACEHOLDER}",
            row=row_id,
            field="completion",
        )
    return {
        "id": row_id,
        "prompt": user_message(text),
        "completion": assistant_message(completion),
        "images": [sample.image],
        "helper_images": helpers,
        "task": task,
        "variant": variant,
        "answer": sample.answer,
        "level": sample.level,
        "map_desc": sample.map_desc,
        "plan": sample.plan,
    }


def exclusion_keys(exclude: Iterable[str | Sequence[Sequence[int]]]) -> set[str]:
    """Problem keys to avoid, from keys (str, see :func:`mirage_tasks.vsp.map_key`) and/or ``map_desc`` lists."""
    keys = set()
    for i, item in enumerate(exclude):
        keys.add(item if isinstance(item, str) else map_key(validate_map_desc(item, row=i)))
    return keys


def make_examples(
    task: str,
    variant: str,
    n: int,
    levels: int | str | Iterable[int] = DEFAULT_LEVELS,
    seed: int | str = 0,
    exclude: Iterable[str | Sequence[Sequence[int]]] = (),
    *,
    helper_step: str = "decisive",
    progress: bool = False,
    max_tries: int = 200,
) -> list[dict[str, Any]]:
    """Generate ``n`` distinct problems of ``task`` laid out as canonical rows of ``variant``.

    Levels are taken in turn (and, for multiple-choice tasks, every level gets every answer equally often), so the
    result is balanced. The same ``task`` and ``seed`` give the same problems for every variant, which keeps
    variant comparisons fair; a different seed gives different problems.

    Args:
        task: one of :data:`TASKS`.
        variant: one of :data:`mirage_tasks.VARIANTS`.
        n: number of rows.
        levels: the levels to draw from (see :func:`parse_levels`).
        seed: random seed (int or str).
        exclude: problems never to produce: keys or ``map_desc`` lists (e.g. official test maps, another split).
        helper_step: reasoning only, ``"decisive"`` or ``"random"`` (see :mod:`mirage_tasks.vsp_reasoning`).
        progress: show a tqdm progress bar.
        max_tries: how many redraws a single row may take to find an unseen problem before giving up.

    Raises:
        UnknownNameError, LevelError: bad task, variant or levels.
        ValueError: when ``n`` distinct unexcluded problems cannot be found (too many rows for too few levels).
    """
    keyed = _draw(task, variant, n, levels, seed, exclusion_keys(exclude), helper_step, progress, max_tries)
    return [row for _, row in keyed]


def _draw(
    task: str,
    variant: str,
    n: int,
    levels: int | str | Iterable[int],
    seed: int | str,
    seen: set[str],
    helper_step: str = "decisive",
    progress: bool = False,
    max_tries: int = 200,
) -> list[tuple[str, dict[str, Any]]]:
    """The work of :func:`make_examples`: ``(problem key, row)`` pairs; adds the keys drawn to ``seen``."""
    check_task(task)
    check_variant(variant)
    levels = parse_levels(levels, task)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    module = _MODULES[task]
    period = len(getattr(module, "CLASSES", ("",)))
    kwargs = {"helper_step": helper_step} if task == "vsp_reasoning" else {}
    rng = random.Random(f"{task}:{seed}")
    out = []
    for index in tqdm(range(n), desc=f"{task}/{variant}", disable=not progress, unit="ex"):
        level = levels[(index // period) % len(levels)]
        for _ in range(max_tries):
            sample = module.generate(rng, level, index, **kwargs)
            if sample.key not in seen:
                break
        else:
            raise ValueError(
                f"could not draw a new {task} problem at level {level} in {max_tries} tries after {index} rows;"
                " ask for fewer rows or add larger levels"
            )
        seen.add(sample.key)
        out.append((sample.key, to_row(sample, task, variant, f"{task}-{seed}-{index:05d}")))
    return out


def build_dataset(
    task: str,
    variant: str,
    n: int,
    levels: int | str | Iterable[int] = DEFAULT_LEVELS,
    seed: int | str = 0,
    exclude: Iterable[str | Sequence[Sequence[int]]] = (),
    **kwargs: Any,
) -> datasets.Dataset:
    """:func:`make_examples` as a ``datasets.Dataset`` with the canonical :data:`FEATURES`."""
    return rows_to_dataset(make_examples(task, variant, n, levels, seed, exclude, **kwargs))


def encode_image(image: Image.Image | dict[str, Any]) -> dict[str, Any]:
    """A PIL image as the ``{"bytes", "path"}`` dict datasets stores, PNG-encoded with fast compression.

    ``datasets`` would encode PIL images itself at PNG's default level 6, which is half as fast for files only
    about a third smaller; images that are already encoded pass through unchanged.
    """
    if isinstance(image, dict):
        return image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return {"bytes": buffer.getvalue(), "path": None}


def rows_to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    """Canonical rows (images as PIL images or ``{"bytes": ...}``) to a ``datasets.Dataset`` with :data:`FEATURES`."""
    encoded = [
        {
            **row,
            "images": [encode_image(i) for i in row["images"]],
            "helper_images": [encode_image(i) for i in row["helper_images"]],
        }
        for row in rows
    ]
    if not encoded:  # `from_list([])` loses the schema
        return datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
    return datasets.Dataset.from_list(encoded, features=FEATURES)


def row_key(row: dict[str, Any]) -> str:
    """The problem key of a canonical VSP row (its map), used to check that splits are disjoint."""
    return map_key(validate_map_desc(row["map_desc"], row=row.get("id")))


def build_splits(
    task: str,
    variant: str,
    n_train: int,
    n_test: int,
    levels: int | str | Iterable[int] = DEFAULT_LEVELS,
    seed: int | str = 0,
    exclude: Iterable[str | Sequence[Sequence[int]]] = (),
    *,
    progress: bool = False,
    **kwargs: Any,
) -> datasets.DatasetDict:
    """A ``train``/``test`` pair with no problem in common and none in ``exclude`` (e.g. the official test maps).

    The test split is drawn first (seed ``"<seed>-test"``), then the train split avoiding it (``"<seed>-train"``).
    Keyword arguments go to :func:`make_examples`.
    """
    seen = exclusion_keys(exclude)
    test = _draw(task, variant, n_test, levels, f"{seed}-test", seen, progress=progress, **kwargs)
    train = _draw(task, variant, n_train, levels, f"{seed}-train", seen, progress=progress, **kwargs)
    return datasets.DatasetDict(
        {"train": rows_to_dataset([r for _, r in train]), "test": rows_to_dataset([r for _, r in test])}
    )
