"""Read and write the official Mirage/VSP JSONL format, and the official VSP data: shipped test set, or a real folder.

An official row looks like::

    {"text_input": "...Here is the map: <image>\\n\\n...", "image_input": "./data/vsp_spatial_planning/imgs_test/...png",
     "text_output": "<think> ... </think><output_image>The answer is \\\\boxed{A}.",   # optional
     "image_output": "./data/examples/images/level_6/343/map_6x6_step_1.png",        # optional
     "map_desc": [[2, -1, 1], [0, 0, 0], [0, 0, 0]]}                                  # optional

``image_input`` and ``image_output`` are a path or a list of paths; one ``<image>`` per input image and one
``<output_image>`` per output image. Errors name the file, the 1-based line (as an editor numbers it) and the field.

**Image paths.** Official paths are relative to the root of the repository that produced them (``./data/<set>/...``),
which rarely matches where the files are now. :func:`resolve_image_path` looks a relative path up under
``image_root`` as written, then with its leading folders dropped one at a time (``data/vsp/imgs/a.png``,
``vsp/imgs/a.png``, ``imgs/a.png``, ``a.png``) and takes the first file that exists. So ``image_root`` may be either
the original repository root or the folder the data set was copied to. Pass ``strip_prefix`` to remove one exact
prefix instead and skip the search.

**The shipped planning test.** The official VSP spatial-planning test (400 maps, levels 3-6) travels with the
package as ``data/vsp_planning_test.tsv``: a header line ``level, map_id, map`` (tab-separated), then one line per
official row in the official order, e.g. ``3<TAB>31<TAB>GHS/FFF/FFF`` (the map as :func:`~mirage_tasks.vsp.map_key` writes
it: S start, G goal, H hole, F ice). That is all an official row carries that the map does not give: every row has the
same ``text_input`` (:data:`~mirage_tasks.templates.PLANNING_PROMPT` with the answer-only instruction), no answer
or ``text_output``, and its picture is named ``imgs_test/level<level>/img/<map_id>.png`` and drawn pixel-exactly by
:func:`~mirage_tasks.vsp.render_map`. :func:`shipped_planning_records` rebuilds the official JSON records from it.

**Official data location.** Every function taking ``root`` follows one rule: ``root`` - else the environment variable
``MIRAGE_OFFICIAL_DATA`` when set and not empty - is either the official data folder (holding
``vsp_spatial_planning_test/test_direct.jsonl`` and ``vsp_spatial_reasoning_samples/sample.jsonl``) or a ``.jsonl``
file, read as is. An explicit ``root`` always wins over the variable. A path that does not exist raises
``FileNotFoundError`` naming the path tried and where it came from. With neither, the planning test and its maps
come from the shipped copy; the reasoning samples do not ship, so they need a path.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import datasets
from PIL import Image

from .dataset import TASKS, assistant_message, encode_image, message_text, rows_to_dataset, user_message
from .errors import TaskDataError
from .templates import (
    COT_SUFFIX,
    DIRECT_SUFFIX,
    IMAGE_MARKER,
    LATENT_PLACEHOLDER,
    PLANNING_PROMPT,
    REASONING_OPTIONS,
    THINK_OPEN,
)
from .variants import VARIANTS, prompt_suffix
from .verifiers import extract_boxed, extract_choice
from .vsp import map_from_key, read_map_image, render_map, shortest_path, simulate_plan, validate_map_desc

OFFICIAL_ENV = "MIRAGE_OFFICIAL_DATA"
PLANNING_TEST = "vsp_spatial_planning_test/test_direct.jsonl"
"""The official VSP spatial-planning test set (400 maps, levels 3-6), relative to the official data root."""
REASONING_SAMPLES = "vsp_spatial_reasoning_samples/sample.jsonl"
"""The official VSP spatial-reasoning training samples (with helper images), relative to the official data root."""
SHIPPED_PLANNING_TEST = Path(__file__).parent / "data" / "vsp_planning_test.tsv"
"""The package's compact copy of the official planning test (see the module docstring)."""
PLANNING_IMAGE = "./data/vsp_spatial_planning/imgs_test/level{level}/img/{map_id}.png"
"""How the official planning test names its pictures (relative to the official repository root)."""
_SHIPPED_COLUMNS = ["level", "map_id", "map"]

_EXTRA_FIELDS = ("id", "task", "variant", "answer", "level", "plan")
"""Canonical fields the writer adds to each official row so that reading it back loses nothing."""

ImageOpener = Callable[[str, str], tuple[dict[str, Any], str]]
"""``(official image path, field) -> (image as {"bytes", "path"}, what to call it in messages)``."""


# ---------------------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------------------
def _given_path(root: str | os.PathLike | None) -> tuple[Path, str] | None:
    """The official data path to use and how it was chosen, or ``None`` when neither argument nor variable gives one."""
    if root is not None and str(root):
        return Path(root), "given as argument"
    if os.environ.get(OFFICIAL_ENV):
        return Path(os.environ[OFFICIAL_ENV]), f"from ${OFFICIAL_ENV}"
    return None


def official_path(name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The official JSONL file to read for ``name`` (:data:`PLANNING_TEST` or :data:`REASONING_SAMPLES`).

    ``root`` (else ``$MIRAGE_OFFICIAL_DATA``) is the official data folder, where ``name`` is looked up, or a
    ``.jsonl`` file, returned as is. ``None`` when neither is given.

    Raises:
        FileNotFoundError: the path, or ``name`` under the folder, does not exist; the message names the path tried
            and whether it was given as argument or came from the environment variable.
        ValueError: the path is a file that is not ``.jsonl``.
    """
    given = _given_path(root)
    if given is None:
        return None
    path, how = given
    if path.is_dir():
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"official data file {path / name} not found: the folder {path} ({how}) should be the official data"
                f" folder holding {name}, or pass the .jsonl file itself"
            )
        return path / name
    if path.is_file():
        if path.suffix != ".jsonl":
            raise ValueError(f"official data path {path} ({how}) is neither a folder nor a .jsonl file")
        return path
    raise FileNotFoundError(
        f"official data path {path} ({how}) not found; pass the official data folder or a .jsonl file, or set"
        f" {OFFICIAL_ENV}"
    )


def official_data_root(root: str | os.PathLike | None = None) -> Path:
    """The official data folder: ``root``, else ``$MIRAGE_OFFICIAL_DATA`` (see the module docstring).

    Raises:
        FileNotFoundError: neither is given, or the folder does not exist; the message names the path tried and
            where it came from.
    """
    given = _given_path(root)
    if given is None:
        raise FileNotFoundError(f"no official data folder given: pass root= or set {OFFICIAL_ENV}")
    path, how = given
    if not path.is_dir():
        raise FileNotFoundError(f"official data folder {path} ({how}) not found; pass root= or set {OFFICIAL_ENV}")
    return path


def resolve_image_path(
    path: str,
    image_root: str | os.PathLike,
    *,
    strip_prefix: str | None = None,
    row: int | str | None = None,
    field: str,
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


def _load_image(path: Path, *, field: str) -> dict[str, Any]:
    """Read an image file's bytes (kept as they are, so nothing is re-encoded) after checking it decodes."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # PIL raises several unrelated types for bad files; all mean "not an image"
        raise TaskDataError(f"cannot read image {path}: {error}", field=field) from None
    return {"bytes": data, "path": None}


def _as_paths(value: Any, *, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise TaskDataError(f"expected a path or a list of paths, got {type(value).__name__}", field=field)


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------
def infer_task(text: str, *, row: int | str | None = None) -> str:
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
    thinks = COT_SUFFIX in text_input or (text_output is not None and THINK_OPEN in text_output)
    latent = text_output is not None and LATENT_PLACEHOLDER in text_output
    return ("mirage-" if latent else "") + ("cot" if thinks else "direct")


def jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, parsed JSON)`` for every non-blank line of a JSONL file.

    Raises:
        TaskDataError: naming the file and line of a line that is not valid JSON.
    """
    with Path(path).open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                raise TaskDataError(f"not valid JSON ({error})", line=number, path=path) from None


def file_opener(image_root: str | os.PathLike, strip_prefix: str | None = None) -> ImageOpener:
    """An :data:`ImageOpener` reading official image paths as files under ``image_root`` (:func:`resolve_image_path`)."""

    def open_file(path: str, field: str) -> tuple[dict[str, Any], str]:
        file = resolve_image_path(path, image_root, strip_prefix=strip_prefix, field=field)
        return _load_image(file, field=field), str(file)

    return open_file


def parse_official_row(
    record: Any,
    line: int,
    open_image: ImageOpener,
    *,
    source: str | os.PathLike | None = None,
    task: str | None = None,
    variant: str | None = None,
    infer_map: bool = True,
    id_prefix: str = "official",
) -> dict[str, Any]:
    """Turn one official JSON record, read from ``line`` (1-based) of ``source``, into a canonical row.

    Images come from ``open_image`` (see :func:`file_opener`) as ``{"bytes": ...}`` dicts. The row's id is
    ``<id_prefix>-<line - 1>`` unless the record has one. Missing verification fields are derived: ``map_desc`` from
    the input picture when ``infer_map`` (the official reasoning samples have none), ``answer`` from ``text_output``
    or else from the map (shortest plan, or the simulated outcome of the plan), ``level`` from the map size, ``plan``
    from the prompt's ``Full Action Plan``.

    Raises:
        TaskDataError: naming ``source``, ``line`` and the field at fault; also when ``infer_map`` needs a map from a
            picture that is not a FrozenLake map drawn at 64 px per cell.
    """
    try:
        return _parse_official_row(record, line, open_image, task, variant, infer_map, id_prefix)
    except TaskDataError as error:
        raise error.located(line=line, path=source) from None


def _parse_official_row(
    record: Any,
    line: int,
    open_image: ImageOpener,
    task: str | None,
    variant: str | None,
    infer_map: bool,
    id_prefix: str,
) -> dict[str, Any]:
    """The work of :func:`parse_official_row`; errors name the field, and the caller adds the line."""
    if not isinstance(record, dict):
        raise TaskDataError(f"expected a JSON object, got {type(record).__name__}")
    text = record.get("text_input")
    if not isinstance(text, str):
        raise TaskDataError("missing or not a string", field="text_input")
    output = record.get("text_output")
    if output is not None and not isinstance(output, str):
        raise TaskDataError("not a string", field="text_output")
    inputs = _as_paths(record.get("image_input"), field="image_input")
    helpers = _as_paths(record.get("image_output"), field="image_output")
    if text.count(IMAGE_MARKER) != len(inputs):
        raise TaskDataError(
            f"text_input has {text.count(IMAGE_MARKER)} {IMAGE_MARKER} markers but {len(inputs)} images",
            field="image_input",
        )
    placeholders = (output or "").count(LATENT_PLACEHOLDER)
    if placeholders != len(helpers):
        raise TaskDataError(
            f"text_output has {placeholders} {LATENT_PLACEHOLDER} placeholders but {len(helpers)} images",
            field="image_output",
        )
    task = record.get("task") or task or infer_task(text)
    if task not in TASKS:
        raise TaskDataError(f"unknown task {task!r}", field="task")
    variant = record.get("variant") or variant or infer_variant(text, output)
    if variant not in VARIANTS:
        raise TaskDataError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}", field="variant")

    opened = [open_image(p, "image_input") for p in inputs]
    images = [image for image, _ in opened]
    helper_images = [open_image(p, "image_output")[0] for p in helpers]

    map_desc = record.get("map_desc")
    if map_desc is not None:
        map_desc = validate_map_desc(map_desc, field="map_desc").tolist()
    elif task != "jigsaw" and infer_map and images:
        try:
            map_desc = read_map_image(Image.open(io.BytesIO(images[0]["bytes"])))
        except TaskDataError as error:
            raise TaskDataError(
                f"cannot read the map from image {opened[0][1]}: {error.reason}; give the row a map_desc, or read"
                " with infer_map=False",
                field="image_input",
            ) from None
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
            answer = shortest_path(validate_map_desc(map_desc))
        elif map_desc and task == "vsp_reasoning" and plan:
            answer = REASONING_OPTIONS.get(simulate_plan(map_desc, plan))
    level = record.get("level")
    if level is None:
        found = re.search(r"level_?(\d+)", inputs[0]) if inputs else None
        level = len(map_desc) if map_desc else int(found.group(1)) if found else 0

    return {
        "id": str(record.get("id") or f"{id_prefix}-{line - 1:05d}"),
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
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    *,
    strip_prefix: str | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Read an official JSONL file into canonical rows (see :func:`parse_official_row` for ``kwargs``).

    ``image_root`` defaults to the JSONL file's folder; ``strip_prefix`` see :func:`resolve_image_path`. Blank lines
    are skipped; errors and default ids count lines from 1, as an editor does.
    """
    path = Path(path)
    open_image = file_opener(path.parent if image_root is None else image_root, strip_prefix)
    kwargs.setdefault("id_prefix", path.stem)
    return [
        parse_official_row(record, line, open_image, source=path, **kwargs) for line, record in jsonl_records(path)
    ]


def read_official_jsonl(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, **kwargs: Any
) -> datasets.Dataset:
    """Read an official JSONL file as a canonical ``datasets.Dataset`` (schema :data:`mirage_tasks.dataset.FEATURES`).

    Args:
        path: the ``.jsonl`` file.
        image_root: where image paths are looked up (default: the file's folder); see :func:`resolve_image_path`.
        **kwargs: ``task``, ``variant`` (else inferred from the text), ``strip_prefix``, ``infer_map``, ``id_prefix``.

    Raises:
        TaskDataError: a malformed row; the message names the file, the 1-based line and the field.
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
def shipped_planning_records() -> list[dict[str, Any]]:
    """The official planning test's 400 JSON records, rebuilt from the package's copy, in the official order.

    Each equals the official ``test_direct.jsonl`` line: ``text_input``, ``image_input``, ``map_id`` and ``map_desc``.

    Raises:
        TaskDataError: naming the line and field of the shipped file if it is damaged.
    """
    with SHIPPED_PLANNING_TEST.open(encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    if not lines or lines[0].split("\t") != _SHIPPED_COLUMNS:
        raise TaskDataError(f"expected the header {' '.join(_SHIPPED_COLUMNS)}", line=1, path=SHIPPED_PLANNING_TEST)
    text_input = PLANNING_PROMPT.replace("{suffix}", DIRECT_SUFFIX)
    records = []
    for number, text in enumerate(lines[1:], start=2):
        try:
            fields = text.split("\t")
            if len(fields) != len(_SHIPPED_COLUMNS):
                raise TaskDataError(f"expected {len(_SHIPPED_COLUMNS)} tab-separated fields, got {len(fields)}")
            level, map_id, key = fields
            map_desc = map_from_key(key)
            if level != str(len(map_desc)):
                raise TaskDataError(f"level {level!r} but the map has side {len(map_desc)}", field="level")
        except TaskDataError as error:
            raise error.located(line=number, path=SHIPPED_PLANNING_TEST) from None
        image = PLANNING_IMAGE.format(level=level, map_id=map_id)
        records.append({"text_input": text_input, "image_input": image, "map_id": map_id, "map_desc": map_desc})
    return records


def _shipped_planning_rows() -> list[dict[str, Any]]:
    """The planning test's canonical rows from the shipped copy, pictures drawn by the renderer.

    They equal the rows read from the official folder (pixel for pixel; the PNG encoding differs).
    """
    rows = []
    for index, record in enumerate(shipped_planning_records()):

        def draw(path: str, field: str, map_desc: list[list[int]] = record["map_desc"]) -> tuple[dict[str, Any], str]:
            return encode_image(render_map(map_desc)), f"{path} (drawn from the shipped map)"

        rows.append(
            parse_official_row(
                record,
                index + 1,
                draw,
                source=f"{PLANNING_TEST} (shipped copy)",
                task="vsp_planning",
                id_prefix=Path(PLANNING_TEST).stem,
            )
        )
    return rows


def load_official_planning_test(root: str | os.PathLike | None = None, variant: str = "direct") -> datasets.Dataset:
    """The official VSP spatial-planning test set (400 rows) as a canonical dataset without completions.

    With no ``root`` (and no ``$MIRAGE_OFFICIAL_DATA``) the rows come from the copy shipped in the package, pictures
    rendered pixel-exactly; ``root`` may also name the official data folder or its ``test_direct.jsonl`` (see the
    module docstring), which gives the same rows. ``answer`` holds a shortest plan (any plan that reaches the goal
    scores). The official prompt asks for an answer only; with ``variant`` set to a reasoning variant the closing
    instruction becomes the one that asks for ``<think>`` reasoning, as the model was trained with.

    Raises:
        FileNotFoundError: a path was given (or set in the variable) that does not exist; the message names it.
    """
    path = official_path(PLANNING_TEST, root)
    if path is None:
        rows = _shipped_planning_rows()
    else:
        rows = read_official_rows(path, task="vsp_planning", id_prefix=Path(PLANNING_TEST).stem)
    suffix = prompt_suffix(variant)
    for row in rows:
        text = message_text(row["prompt"])
        if text.endswith(DIRECT_SUFFIX):
            row["prompt"] = user_message(text[: -len(DIRECT_SUFFIX)] + suffix)
        row["variant"] = variant
    return rows_to_dataset(rows)


def load_official_reasoning_samples(root: str | os.PathLike | None = None) -> datasets.Dataset:
    """The official VSP spatial-reasoning samples (with helper images), maps recovered from their pictures.

    They do not ship with the package: ``root`` (else ``$MIRAGE_OFFICIAL_DATA``) names the official data folder or
    its ``sample.jsonl``.

    Raises:
        FileNotFoundError: no path is given, or the one given does not exist; the message names it.
    """
    path = official_path(REASONING_SAMPLES, root)
    if path is None:
        raise FileNotFoundError(
            f"the official reasoning samples do not ship with mirage_tasks: pass the official data folder or its"
            f" {REASONING_SAMPLES}, or set {OFFICIAL_ENV}"
        )
    return read_official_jsonl(path, task="vsp_reasoning")


def official_test_maps(root: str | os.PathLike | None = None) -> list[list[list[int]]]:
    """The ``map_desc`` of every official planning test row, e.g. to exclude from training data.

    From the shipped copy unless ``root`` (else ``$MIRAGE_OFFICIAL_DATA``) names the official data folder or its
    ``test_direct.jsonl``; so exclusion works in an installed package with no official folder.

    Raises:
        FileNotFoundError: a path was given that does not exist; the message names it.
        TaskDataError: a row of the given file has no valid ``map_desc``; the message names the file and line.
    """
    path = official_path(PLANNING_TEST, root)
    if path is None:
        return [record["map_desc"] for record in shipped_planning_records()]
    maps = []
    for line, record in jsonl_records(path):
        try:
            value = record.get("map_desc") if isinstance(record, dict) else None
            maps.append(validate_map_desc(value).tolist())
        except TaskDataError as error:
            raise error.located(line=line, path=path) from None
    return maps
