"""Official JSONL format: the shipped planning test, official folders and files, round trips, paths and bad input.

Everything here reads the shipped copy or ``tests/fixtures/official`` (a few official rows and pictures, copied
unchanged into the official folder layout); nothing needs the official data folder.
"""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mirage_tasks
from mirage_tasks import TaskDataError
from mirage_tasks.official import (
    OFFICIAL_ENV,
    PLANNING_TEST,
    REASONING_SAMPLES,
    official_data_root,
    official_path,
    read_official_rows,
    resolve_image_path,
    shipped_planning_records,
)
from mirage_tasks.templates import COT_SUFFIX
from mirage_tasks.verifiers import extract_choice

FIXTURES = Path(__file__).parent / "fixtures" / "official"
"""A miniature official data folder: 5 planning test rows (levels 3-6) and 2 reasoning samples, with their pictures."""


@pytest.fixture(autouse=True)
def no_official_env(monkeypatch):
    """Each test starts without $MIRAGE_OFFICIAL_DATA, as in a user's clone; tests that need it set it."""
    monkeypatch.delenv(OFFICIAL_ENV, raising=False)


@pytest.fixture(scope="module")
def planning_test():
    return mirage_tasks.load_official_planning_test()


@pytest.fixture(scope="module")
def fixture_planning():
    return mirage_tasks.load_official_planning_test(FIXTURES)


@pytest.fixture(scope="module")
def reasoning_samples():
    return mirage_tasks.load_official_reasoning_samples(FIXTURES)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pixels(image):
    if isinstance(image, dict):  # rows straight from read_official_rows hold encoded bytes
        image = Image.open(io.BytesIO(image["bytes"]))
    return np.asarray(image.convert("RGB")).tobytes()


_FIELDS = ("prompt", "completion", "task", "variant", "answer", "level", "map_desc", "plan")


def _same_rows(a, b, *, ids=True):
    for x, y in zip(a, b, strict=True):
        for key in ("id", *_FIELDS) if ids else _FIELDS:
            assert x[key] == y[key], key
        for key in ("images", "helper_images"):
            assert [_pixels(i) for i in x[key]] == [_pixels(i) for i in y[key]], key


def _shipped_index(record):
    """Where an official record stands in the shipped test (map ids repeat across levels, so match on both)."""
    (index,) = [
        i
        for i, r in enumerate(shipped_planning_records())
        if (r["map_id"], r["map_desc"]) == (record["map_id"], record["map_desc"])
    ]
    return index


# ---------------------------------------------------------------------------------------------------------
# The shipped planning test
# ---------------------------------------------------------------------------------------------------------
def test_planning_test_ships_with_the_package_in_canonical_form(planning_test):
    assert len(planning_test) == 400
    assert planning_test.features == mirage_tasks.FEATURES
    assert all(planning_test["level"].count(level) == 100 for level in (3, 4, 5, 6))
    row = planning_test[0]
    assert row["id"] == "test_direct-00000" and planning_test[399]["id"] == "test_direct-00399"
    assert row["task"] == "vsp_planning" and row["variant"] == "direct" and row["completion"] == []
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["text", "image", "text"]
    assert row["helper_images"] == [] and row["map_desc"] == [[2, -1, 1], [0, 0, 0], [0, 0, 0]]
    assert row["images"][0].size == (192, 192)
    assert all(mirage_tasks.simulate_plan(r["map_desc"], r["answer"]) == "success" for r in planning_test)
    assert mirage_tasks.official_test_maps() == planning_test["map_desc"]


def test_shipped_records_are_the_official_lines():
    """The compact copy loses nothing: each official line is rebuilt exactly, prompt and picture path included."""
    official = _lines(FIXTURES / PLANNING_TEST)
    shipped = shipped_planning_records()
    assert len(shipped) == 400
    indices = [_shipped_index(record) for record in official]
    assert [shipped[i] for i in indices] == official
    assert indices == [0, 2, 3, 8, 9]  # the fixture lines were taken from these official lines


def test_official_folder_and_file_give_the_shipped_rows(planning_test, fixture_planning):
    """Reading real official data gives the shipped rows: same fields, same pixels (ids count the file's lines)."""
    from_file = mirage_tasks.load_official_planning_test(FIXTURES / PLANNING_TEST)
    _same_rows(fixture_planning, from_file)
    official = _lines(FIXTURES / PLANNING_TEST)
    _same_rows(fixture_planning, planning_test.select([_shipped_index(r) for r in official]), ids=False)
    assert fixture_planning["id"] == [f"test_direct-{i:05d}" for i in range(5)]
    assert sorted(set(fixture_planning["level"])) == [3, 4, 5, 6]


def test_planning_test_prompt_follows_the_variant(planning_test):
    cot = mirage_tasks.load_official_planning_test(variant="mirage-cot")
    assert mirage_tasks.prompt_text(cot[0]).endswith(COT_SUFFIX) and cot[0]["variant"] == "mirage-cot"
    assert mirage_tasks.prompt_text(cot[0]).replace(COT_SUFFIX, "") == mirage_tasks.prompt_text(
        planning_test[0]
    ).replace(mirage_tasks.templates.DIRECT_SUFFIX, "")


# ---------------------------------------------------------------------------------------------------------
# Where official data is read from: argument, else $MIRAGE_OFFICIAL_DATA, else the shipped copy.
# ---------------------------------------------------------------------------------------------------------
def test_a_folder_or_a_jsonl_file_may_be_given_and_the_argument_wins(monkeypatch, tmp_path):
    assert official_path(PLANNING_TEST) is None
    assert official_path(PLANNING_TEST, FIXTURES) == FIXTURES / PLANNING_TEST
    assert official_path(PLANNING_TEST, FIXTURES / PLANNING_TEST) == FIXTURES / PLANNING_TEST
    fixture_maps = [r["map_desc"] for r in _lines(FIXTURES / PLANNING_TEST)]
    monkeypatch.setenv(OFFICIAL_ENV, str(FIXTURES))
    assert mirage_tasks.official_test_maps() == fixture_maps
    assert official_data_root() == FIXTURES
    monkeypatch.setenv(OFFICIAL_ENV, str(FIXTURES / PLANNING_TEST))
    assert mirage_tasks.official_test_maps() == fixture_maps
    monkeypatch.setenv(OFFICIAL_ENV, str(tmp_path / "absent"))
    assert mirage_tasks.official_test_maps(FIXTURES) == fixture_maps  # an explicit path wins over the variable
    assert len(mirage_tasks.load_official_reasoning_samples(FIXTURES)) == 2
    monkeypatch.setenv(OFFICIAL_ENV, "")  # set but empty reads as unset
    assert len(mirage_tasks.official_test_maps()) == 400


def test_missing_paths_are_named_with_where_they_came_from(monkeypatch, tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{absent} (given as argument) not found")):
        mirage_tasks.load_official_planning_test(absent)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{absent} (given as argument) not found")):
        official_data_root(absent)
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"{tmp_path / PLANNING_TEST} not found: the folder {tmp_path} (given as argument)"),
    ):
        mirage_tasks.official_test_maps(tmp_path)
    (tmp_path / "maps.txt").write_text("")
    with pytest.raises(ValueError, match="maps.txt \\(given as argument\\) is neither a folder nor a .jsonl file"):
        mirage_tasks.official_test_maps(tmp_path / "maps.txt")
    with pytest.raises(FileNotFoundError, match="do not ship with mirage_tasks"):
        mirage_tasks.load_official_reasoning_samples()
    with pytest.raises(FileNotFoundError, match=f"no official data folder given: pass root= or set {OFFICIAL_ENV}"):
        official_data_root()
    monkeypatch.setenv(OFFICIAL_ENV, str(absent))
    for load in (mirage_tasks.official_test_maps, mirage_tasks.load_official_planning_test):
        with pytest.raises(FileNotFoundError, match=re.escape(f"{absent} (from ${OFFICIAL_ENV}) not found")):
            load()


# ---------------------------------------------------------------------------------------------------------
# Reasoning samples, round trips, image paths
# ---------------------------------------------------------------------------------------------------------
def test_reasoning_samples_read_with_helper_images_and_recovered_maps(reasoning_samples):
    assert len(reasoning_samples) == 2  # the fixture's last line has no newline, as the official file's
    assert reasoning_samples["level"] == [4, 3]
    for row in reasoning_samples:
        assert row["variant"] == "mirage-cot" and row["task"] == "vsp_reasoning"
        assert (
            len(row["helper_images"]) == 1 == mirage_tasks.completion_text(row).count(mirage_tasks.LATENT_PLACEHOLDER)
        )
        assert row["map_desc"], "map recovered from the input picture"
        assert row["level"] == len(row["map_desc"])
        # the official answer agrees with simulating the official plan on the recovered map
        truth = {"success": "A", "hole": "B", "not_at_goal": "C"}[
            mirage_tasks.simulate_plan(row["map_desc"], row["plan"])
        ]
        assert row["answer"] == truth == extract_choice(mirage_tasks.completion_text(row))


def test_official_files_round_trip(tmp_path, fixture_planning, reasoning_samples):
    for name, dataset, source in [
        ("planning", fixture_planning, PLANNING_TEST),
        ("reasoning", reasoning_samples, REASONING_SAMPLES),
    ]:
        path = mirage_tasks.write_official_jsonl(dataset, tmp_path / name / "out.jsonl")
        back = mirage_tasks.read_official_jsonl(path)
        _same_rows(dataset, back)
        original = _lines(FIXTURES / source)
        written = _lines(path)
        for o, w in zip(original, written, strict=True):
            assert w["text_input"] == o["text_input"]
            assert w.get("text_output") == o.get("text_output")
            assert w.get("map_desc", o.get("map_desc")) == o.get("map_desc", w.get("map_desc"))
        # stored image bytes are copied, not re-encoded
        first = original[0]["image_input"]
        src = resolve_image_path(first, (FIXTURES / source).parent, field="image_input")
        assert (path.parent / written[0]["image_input"]).read_bytes() == src.read_bytes()


@pytest.mark.parametrize("task", mirage_tasks.TASKS)
def test_generated_rows_round_trip(tmp_path, task):
    rows = mirage_tasks.make_examples(task, "mirage-cot", 6, levels="3-5", seed=4)
    path = mirage_tasks.write_official_jsonl(rows, tmp_path / "gen.jsonl", tmp_path / "root")
    _same_rows(rows, read_official_rows(path, tmp_path / "root"))
    _same_rows(mirage_tasks.rows_to_dataset(rows), mirage_tasks.read_official_jsonl(path, tmp_path / "root"))


def test_paths_resolve_from_the_original_repository_root_or_the_copied_folder(tmp_path):
    folder = FIXTURES / "vsp_spatial_planning_test"
    path = "./data/vsp_spatial_planning/imgs_test/level3/img/31.png"
    expected = folder / "imgs_test/level3/img/31.png"
    assert resolve_image_path(path, folder, field="image_input") == expected
    prefix = "./data/vsp_spatial_planning/"
    assert resolve_image_path(path, folder, strip_prefix=prefix, field="image_input") == expected
    repo = tmp_path / "repo"
    (repo / "data/vsp_spatial_planning/imgs_test/level3/img").mkdir(parents=True)
    shutil.copy(expected, repo / "data/vsp_spatial_planning/imgs_test/level3/img/31.png")
    assert resolve_image_path(path, repo, field="image_input").read_bytes() == expected.read_bytes()
    assert resolve_image_path(str(expected), tmp_path, field="image_input") == expected
    with pytest.raises(TaskDataError, match="field 'image_input': path .* does not start with"):
        resolve_image_path(path, folder, strip_prefix="./other/", field="image_input")


# ---------------------------------------------------------------------------------------------------------
# Bad input: every error names the file, the 1-based line and the field.
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture()
def jsonl(tmp_path):
    """Write records (with a valid 3x3 map picture at img.png) and return the JSONL path."""
    mirage_tasks.render_map([[1, 0, 0], [0, 0, 0], [0, 0, 2]]).save(tmp_path / "img.png")
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")

    def write(*records):
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
        return path

    return write


def _good(**fields):
    record = {
        "text_input": mirage_tasks.templates.PLANNING_PROMPT.format(suffix=mirage_tasks.templates.DIRECT_SUFFIX),
        "image_input": "./data/x/img.png",
        "map_desc": [[1, 0, 0], [0, 0, 0], [0, 0, 2]],
    }
    record.update(fields)
    return {k: v for k, v in record.items() if v is not None}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (_good(image_input="./data/x/missing.png"), "line 2 field 'image_input': image file './data/x/missing.png' not found"),
        (_good(image_input="garbage.png"), "line 2 field 'image_input': cannot read image"),
        (_good(map_desc=[[1, 0, 1], [0, 0, 0], [0, 0, 2]]), "line 2 field 'map_desc': expected exactly one start \\(1\\), found 2"),
        (_good(map_desc=[[1, 0, 0], [0, 0, 0], [0, 0, 0]]), "line 2 field 'map_desc': expected exactly one goal \\(2\\), found 0"),
        (_good(map_desc=[[1, 0, 0], [0, 0], [0, 0, 2]]), "line 2 field 'map_desc': map is not rectangular"),
        (_good(map_desc=[[1, 0, 7], [0, 0, 0], [0, 0, 2]]), "line 2 field 'map_desc': unknown cell codes 7"),
        (_good(map_desc=[]), "line 2 field 'map_desc': expected a non-empty list"),
        (_good(text_output="<output_image><output_image>\\boxed{DR}", image_output="img.png"),
         "line 2 field 'image_output': text_output has 2 <output_image> placeholders but 1 images"),
        (_good(text_output="<output_image>\\boxed{DR}"), "line 2 field 'image_output': text_output has 1 <output_image> placeholders but 0"),
        (_good(image_input=["img.png", "img.png"]), "line 2 field 'image_input': text_input has 1 <image> markers but 2 images"),
        (_good(image_input=7), "line 2 field 'image_input': expected a path or a list of paths, got int"),
        (_good(task="maze"), "line 2 field 'task': unknown task 'maze'"),
        (_good(variant="mirage"), "line 2 field 'variant': unknown variant 'mirage'"),
        (_good(text_input="What is this? <image>"), "line 2 field 'text_input': cannot tell the task"),
        (_good(text_input=None), "line 2 field 'text_input': missing"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
        ("{not json", "line 2: not valid JSON"),
    ],
)  # fmt: skip
def test_bad_rows_raise_errors_naming_file_line_and_field(jsonl, record, message):
    path = jsonl(_good(), record)
    with pytest.raises(TaskDataError, match=message) as caught:
        mirage_tasks.read_official_jsonl(path)
    assert str(caught.value).startswith(f"{path} line 2")
    assert caught.value.line == 2 and caught.value.path == path


def test_line_numbers_count_blank_lines_as_an_editor_does(jsonl):
    path = jsonl(_good(), "", _good(), "  ", _good(map_desc=[[1, 1]]))
    with pytest.raises(
        TaskDataError, match=f"^{re.escape(str(path))} line 5 field 'map_desc': expected exactly one start"
    ):
        read_official_rows(path)
    rows = read_official_rows(jsonl(_good(), "", _good()))
    assert [row["id"] for row in rows] == ["rows-00000", "rows-00002"]  # ids keep their 0-based line index


def test_official_test_maps_of_a_bad_file_name_the_line(jsonl):
    path = jsonl(_good(), _good(), _good(map_desc=None))
    with pytest.raises(
        TaskDataError, match=f"^{re.escape(str(path))} line 3 field 'map_desc': expected a non-empty list of rows"
    ):
        mirage_tasks.official_test_maps(path)


def test_rows_without_map_desc_read_the_map_from_the_picture(jsonl):
    (row,) = read_official_rows(jsonl(_good(map_desc=None)))
    assert row["map_desc"] == [[1, 0, 0], [0, 0, 0], [0, 0, 2]] and row["answer"] == "DDRR"
    (row,) = read_official_rows(jsonl(_good(map_desc=None)), infer_map=False)
    assert row["map_desc"] == [] and row["answer"] == ""


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        (0.75, "a 144x144 px picture is not a FrozenLake map drawn at 64 px per cell"),
        (1.25, "a 240x240 px picture is not a FrozenLake map drawn at 64 px per cell"),
        (None, "cell \\(0,0\\) of the 192x192 px picture is none of gymnasium 0.29.1's FrozenLake tiles at 64 px"),
    ],
)
def test_a_map_picture_not_drawn_at_64_px_per_cell_is_an_error_not_an_empty_map(jsonl, scale, message):
    picture = mirage_tasks.render_map([[1, 0, 0], [0, 0, 0], [0, 0, 2]])
    folder = jsonl(_good()).parent
    if scale is None:  # right size, but not gymnasium's pixels (e.g. saved as JPEG)
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG")
        picture = Image.open(buffer)
    else:
        picture = picture.resize((round(192 * scale),) * 2)
    picture.save(folder / "odd.png")
    path = jsonl(_good(), _good(map_desc=None, image_input="./data/x/odd.png"))
    with pytest.raises(TaskDataError, match=message) as caught:
        read_official_rows(path)
    text = str(caught.value)
    assert text.startswith(f"{path} line 2 field 'image_input': cannot read the map from image {folder / 'odd.png'}")
    assert "infer_map=False" in text
    (row,) = read_official_rows(jsonl(_good(map_desc=None, image_input="./data/x/odd.png")), infer_map=False)
    assert row["map_desc"] == []
