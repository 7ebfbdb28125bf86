"""Read and write the official Mirage/VSP JSONL format, and locate the official data.

An official row looks like::

    {"text_input": "...Here is the map: <image>\\n\\n...", "image_input": "./data/vsp_spatial_planning/imgs_test/...png",
     "text_output": "<think> ... </think><output_image>The answer is \\\\boxed{A}.",   # optional
     "image_output": "./data/examples/images/level_6/343/map_6x6_step_1.png",        # optional
     "map_desc": [[2, -1, 1], [0, 0, 0], [0, 0, 0]]}                                  # optional

``image_input`` and ``image_output`` are a path or a list of paths; one ``<image>`` per input image and one
``<output_image>`` per output image.

**Image paths.** Official paths are relative to the root of the repository that produced them (``./data/<set>/...``),
which rarely matches where the files are now. :func:`resolve_image_path` looks a relative path up under
``image_root`` as written, then with its leading folders dropped one at a time (``data/vsp/imgs/a.png``,
``vsp/imgs/a.png``, ``imgs/a.png``, ``a.png``) and takes the first file that exists. So ``image_root`` may be either
the original repository root or the folder the data set was copied to. Pass ``strip_prefix`` to remove one exact
prefix instead and skip the search.

**Official data location.** :func:`official_data_root` resolves, in order: an explicit argument, the environment
variable ``MIRAGE_OFFICIAL_DATA``, then ``<repository>/../shared/data/official``.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import datasets
from PIL import Image

from . import templates as T
from .dataset import TASKS, assistant_message, message_text, rows_to_dataset, user_message
from .errors import TaskDataError
from .templates import IMAGE_MARKER, LATENT_PLACEHOLDER
from .variants import VARIANTS, prompt_suffix
from .verifiers import extract_boxed, extract_choice
from .vsp import map_from_image, shortest_path, simulate_plan, validate_map_desc

OFFICIAL_ENV = "MIRAGE_OFFICIAL_DATA"
PLANNING_TEST = "vsp_spatial_planning_test/test_direct.jsonl"
"""The official VSP spatial-planning test set (400 maps, levels 3-6), relative to the official data root."""
REASONING_SAMPLES = "vsp_spatial_reasoning_samples/sample.jsonl"
"""The official VSP spatial-reasoning training samples (with helper images), relative to the official data root."""

_EXTRA_FIELDS = ("id", "task", "variant", "answer", "level", "plan")
"""Canonical fields the writer adds to each official row so that reading it back loses nothing."""


# ---------------------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------------------
def official_data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the official data (see the module docstring for the search order).

    Raises:
        FileNotFoundError: the folder does not exist; the message says how to point at it.
    """
    if root is None:
        root = os.environ.get(OFFICIAL_ENV) or Path(__file__).resolve().parents[1].parent / "shared/data/official"
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"official data folder {root} not found; set {OFFICIAL_ENV} or pass root=")
    return root


def resolve_image_path(
    path: str, image_root: str | os.PathLike, *, strip_prefix: str | None = None, row: int | str, field: str
) -> Path:
    """Find the file an official image path names (see the module docstring for the rule).

    Raises:
        TaskDataError: naming ``row`` and ``field`` when no candidate file exists or ``strip_prefix`` does not apply.
    """
    if not isinstance(path, str) or not path:
        raise TaskDataError(f"expected an image path, got {path!r}", row=row, field=field)
    root = Path(image_root)
    if strip_prefix is not None:
        if not path.startswith(strip_prefix):
            raise TaskDataError(f"path {path!r} does not start with {strip_prefix!r}", row=row, field=field)
        candidates = [root / path[len(strip_prefix) :]]
    elif Path(path).is_absolute():
        candidates = [Path(path)]
    else:
        parts = [p for p in PurePosixPath(path).parts if p != "."]
        candidates = [root.joinpath(*parts[i:]) for i in range(len(parts))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TaskDataError(f"image file {path!r} not found under {root} (tried {len(candidates)} locations)", row=row, field=field)  # fmt: skip


def _load_image(path: Path, *, row: int | str, field: str) -> dict[str, Any]:
    """Read an image file's bytes (kept as they are, so nothing is re-encoded) after checking it decodes."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises several unrelated types for bad files
        raise TaskDataError(f"cannot read image {path}: {error}", row=row, field=field) from None
    return {"bytes": data, "path": None}


def _as_paths(value: Any, *, row: int | str, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise TaskDataError(f"expected a path or a list of paths, got {type(value).__name__}", row=row, field=field)


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
def infer_task(text: str, *, row: int | str) -> str:
    """Which task an official ``text_input`` belongs to, from its wording."""
    if "Full Action Plan:" in text:
        return "vsp_reasoning"
    if "devise an action plan" in text:
        return "vsp_planning"
    if "candidate pieces" in text:
        return "jigsaw"
    raise TaskDataError("cannot tell the task from the text; pass task=", row=row, field="text_input")


def infer_variant(text_input: str, text_output: str | None) -> str:
    """Which training variant a row is: reasoning if the prompt asks for ``<think>`` (or the output has it), latent
    if the output has ``<output_image>``."""
    thinks = T.COT_SUFFIX in text_input or (text_output is not None and T.THINK_OPEN in text_output)
    latent = text_output is not None and LATENT_PLACEHOLDER in text_output
    return ("mirage-" if latent else "") + ("cot" if thinks else "direct")


def parse_official_row(
    record: Any,
    index: int,
    image_root: str | os.PathLike,
    *,
    task: str | None = None,
    variant: str | None = None,
    strip_prefix: str | None = None,
    infer_map: bool = True,
    id_prefix: str = "official",
) -> dict[str, Any]:
    """Turn one official JSON record into a canonical row (images as ``{"bytes": ...}`` dicts).

    Missing verification fields are derived: ``map_desc`` from the input picture when ``infer_map`` (the official
    reasoning samples have none), ``answer`` from ``text_output`` or else from the map (shortest plan, or the
    simulated outcome of the plan), ``level`` from the map size, ``plan`` from the prompt's ``Full Action Plan``.

    Raises:
        TaskDataError: naming the row (``id`` if present, else the 0-based line index) and the field at fault.
    """
    row: int | str = index
    if not isinstance(record, dict):
        raise TaskDataError(f"expected a JSON object, got {type(record).__name__}", row=row, field="record")
    text = record.get("text_input")
    if not isinstance(text, str):
        raise TaskDataError("missing or not a string", row=row, field="text_input")
    output = record.get("text_output")
    if output is not None and not isinstance(output, str):
        raise TaskDataError("not a string", row=row, field="text_output")
    inputs = _as_paths(record.get("image_input"), row=row, field="image_input")
    helpers = _as_paths(record.get("image_output"), row=row, field="image_output")
    if text.count(IMAGE_MARKER) != len(inputs):
        raise TaskDataError(
            f"text_input has {text.count(IMAGE_MARKER)} {IMAGE_MARKER} markers but {len(inputs)} images",
            row=row,
            field="image_input",
        )
    placeholders = (output or "").count(LATENT_PLACEHOLDER)
    if placeholders != len(helpers):
        raise TaskDataError(
            f"text_output has {placeholders} {LATENT_PLACEHOLDER} placeholders but {len(helpers)} images",
            row=row,
            field="image_output",
        )
    task = record.get("task") or task or infer_task(text, row=row)
    if task not in TASKS:
        raise TaskDataError(f"unknown task {task!r}", row=row, field="task")
    variant = record.get("variant") or variant or infer_variant(text, output)
    if variant not in VARIANTS:
        raise TaskDataError(
            f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}", row=row, field="variant"
        )

    images = [_load_image(resolve_image_path(p, image_root, strip_prefix=strip_prefix, row=row, field="image_input"), row=row, field="image_input") for p in inputs]  # fmt: skip
    helper_images = [_load_image(resolve_image_path(p, image_root, strip_prefix=strip_prefix, row=row, field="image_output"), row=row, field="image_output") for p in helpers]  # fmt: skip

    map_desc = record.get("map_desc")
    if map_desc is not None:
        map_desc = validate_map_desc(map_desc, row=row, field="map_desc").tolist()
    elif task != "jigsaw" and infer_map and images:
        map_desc = map_from_image(Image.open(io.BytesIO(images[0]["bytes"])))
    map_desc = map_desc or []

    plan = record.get("plan")
    if plan is None and task == "vsp_reasoning":
        match = re.search(r"Full Action Plan: ([^\n]*)", text)
        plan = match.group(1).strip() if match else ""

    answer = record.get("answer")
    if answer is None:
        if output is not None:
            answer = extract_boxed(output) if task == "vsp_planning" else extract_choice(output, "ABC")
        elif map_desc and task == "vsp_planning":
            answer = shortest_path(validate_map_desc(map_desc, row=row))
        elif map_desc and task == "vsp_reasoning" and plan:
            answer = T.REASONING_OPTIONS.get(simulate_plan(map_desc, plan))
    level = record.get("level")
    if level is None:
        found = re.search(r"level_?(\d+)", inputs[0]) if inputs else None
        level = len(map_desc) if map_desc else int(found.group(1)) if found else 0

    return {
        "id": str(record.get("id") or f"{id_prefix}-{index:05d}"),
        "prompt": user_message(text),
        "completion": assistant_message(output) if output is not None else [],
        "images": images,
        "helper_images": helper_images,
        "task": task,
        "variant": variant,
        "answer": answer or "",
        "level": int(level),
        "map_desc": map_desc,
        "plan": plan or "",
    }


def read_official_rows(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, **kwargs: Any
) -> list[dict[str, Any]]:
    """Read an official JSONL file into canonical rows (see :func:`parse_official_row` for ``kwargs``).

    ``image_root`` defaults to the JSONL file's folder. Blank lines are skipped; rows are numbered from 0 by line.
    """
    path = Path(path)
    image_root = path.parent if image_root is None else image_root
    kwargs.setdefault("id_prefix", path.stem)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskDataError(f"not valid JSON ({error})", row=index, field="line") from None
            rows.append(parse_official_row(record, index, image_root, **kwargs))
    return rows


def read_official_jsonl(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, **kwargs: Any
) -> datasets.Dataset:
    """Read an official JSONL file as a canonical ``datasets.Dataset`` (schema :data:`mirage_tasks.dataset.FEATURES`).

    Args:
        path: the ``.jsonl`` file.
        image_root: where image paths are looked up (default: the file's folder); see :func:`resolve_image_path`.
        **kwargs: ``task``, ``variant`` (else inferred from the text), ``strip_prefix``, ``infer_map``, ``id_prefix``.

    Raises:
        TaskDataError: a malformed row; the message names the row and the field.
    """
    return rows_to_dataset(read_official_rows(path, image_root, **kwargs))


# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------
def write_official_jsonl(
    dataset: datasets.Dataset | Sequence[dict[str, Any]],
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    image_dir: str = "images",
) -> Path:
    """Write canonical rows in the official JSONL format, with their images as PNG files.

    Images go to ``<image_root>/<image_dir>/<id>/input_<i>.png`` and ``helper_<i>.png``; the JSONL stores those
    paths relative to ``image_root`` (default: the JSONL file's folder). Images already held as encoded bytes are
    written unchanged. Besides the official fields, each line keeps ``id``, ``task``, ``variant``, ``answer``,
    ``level`` and ``plan`` so that :func:`read_official_jsonl` gets back exactly the same rows.

    Returns:
        The JSONL path.
    """
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in _iter_undecoded(dataset):
            folder = PurePosixPath(image_dir) / _safe_name(row["id"])
            inputs = _save_images(row["images"], image_root, folder, "input")
            helpers = _save_images(row["helper_images"], image_root, folder, "helper")
            record: dict[str, Any] = {
                "text_input": message_text(row["prompt"]),
                "image_input": inputs[0] if len(inputs) == 1 else inputs,
            }
            if row["completion"]:
                record["text_output"] = message_text(row["completion"])
            if helpers:
                record["image_output"] = helpers[0] if len(helpers) == 1 else helpers
            if row["map_desc"]:
                record["map_desc"] = [list(line) for line in row["map_desc"]]
            record.update({key: row[key] for key in _EXTRA_FIELDS})
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _iter_undecoded(dataset: datasets.Dataset | Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows with images as stored (``{"bytes", "path"}`` for a Dataset, so they can be written without re-encoding)."""
    if not isinstance(dataset, datasets.Dataset):
        yield from dataset
        return
    for batch in dataset.with_format("arrow").iter(batch_size=256):
        yield from batch.to_pylist()


def _save_images(images: list[Any], image_root: Path, folder: PurePosixPath, stem: str) -> list[str]:
    """Write images as ``<folder>/<stem>_<i>.png`` under ``image_root``; return the relative paths."""
    names = []
    for i, image in enumerate(images):
        name = str(folder / f"{stem}_{i}.png")
        (image_root / folder).mkdir(parents=True, exist_ok=True)
        if isinstance(image, dict) and image.get("bytes"):
            (image_root / name).write_bytes(image["bytes"])
        else:
            opened = Image.open(image["path"]) if isinstance(image, dict) else image
            opened.save(image_root / name, format="PNG")
        names.append(name)
    return names


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


# ---------------------------------------------------------------------------------------------------------
# The official sets
# ---------------------------------------------------------------------------------------------------------
def load_official_planning_test(root: str | os.PathLike | None = None, variant: str = "direct") -> datasets.Dataset:
    """The official VSP spatial-planning test set (400 rows) as a canonical dataset without completions.

    ``answer`` holds a shortest plan (any plan that reaches the goal scores). The official prompt asks for an
    answer only; with ``variant`` set to a reasoning variant the closing instruction becomes the one that asks for
    ``<think>`` reasoning, as the model was trained with.
    """
    root = official_data_root(root)
    rows = read_official_rows(root / PLANNING_TEST, task="vsp_planning")
    suffix = prompt_suffix(variant)
    for row in rows:
        text = message_text(row["prompt"])
        if text.endswith(T.DIRECT_SUFFIX):
            row["prompt"] = user_message(text[: -len(T.DIRECT_SUFFIX)] + suffix)
        row["variant"] = variant
    return rows_to_dataset(rows)


def load_official_reasoning_samples(root: str | os.PathLike | None = None) -> datasets.Dataset:
    """The official VSP spatial-reasoning samples (with helper images), maps recovered from their pictures."""
    return read_official_jsonl(official_data_root(root) / REASONING_SAMPLES, task="vsp_reasoning")


def official_test_maps(root: str | os.PathLike | None = None) -> list[list[list[int]]]:
    """The ``map_desc`` of every official planning test row, e.g. to exclude from training data.

    ``root`` may be the official data folder or the ``test_direct.jsonl`` file itself.
    """
    path = Path(root) if root is not None and Path(root).is_file() else official_data_root(root) / PLANNING_TEST
    maps = []
    with path.open(encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if line.strip():
                record = json.loads(line)
                maps.append(validate_map_desc(record.get("map_desc"), row=index).tolist())
    return maps
