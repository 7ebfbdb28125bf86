"""Official JSONL format: reading the shared official data, round trips, path resolution and bad input."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import mirage_tasks
from mirage_tasks import TaskDataError
from mirage_tasks.official import (
    PLANNING_TEST,
    REASONING_SAMPLES,
    official_data_root,
    read_official_rows,
    resolve_image_path,
)
from mirage_tasks.templates import COT_SUFFIX
from mirage_tasks.verifiers import extract_choice


@pytest.fixture(scope="module")
def official_root():
    # Fails (does not skip) when the official data is missing: CI keeps it beside the repository.
    return official_data_root()


@pytest.fixture(scope="module")
def planning_test(official_root):
    return mirage_tasks.load_official_planning_test(official_root)


@pytest.fixture(scope="module")
def reasoning_samples(official_root):
    return mirage_tasks.load_official_reasoning_samples(official_root)


def _pixels(image):
    if isinstance(image, dict):  # rows straight from read_official_rows hold encoded bytes
        image = Image.open(io.BytesIO(image["bytes"]))
    return np.asarray(image.convert("RGB")).tobytes()


def _same_rows(a, b):
    for x, y in zip(a, b, strict=True):
        for key in ("id", "prompt", "completion", "task", "variant", "answer", "level", "map_desc", "plan"):
            assert x[key] == y[key], key
        for key in ("images", "helper_images"):
            assert [_pixels(i) for i in x[key]] == [_pixels(i) for i in y[key]], key


def test_env_var_points_at_the_official_data(monkeypatch, tmp_path, official_root):
    monkeypatch.setenv("MIRAGE_OFFICIAL_DATA", str(official_root))
    assert official_data_root() == official_root
    monkeypatch.setenv("MIRAGE_OFFICIAL_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="MIRAGE_OFFICIAL_DATA"):
        official_data_root()


def test_planning_test_set_reads_in_canonical_form(planning_test):
    assert len(planning_test) == 400
    assert planning_test.features == mirage_tasks.FEATURES
    assert sorted(set(planning_test["level"])) == [3, 4, 5, 6]
    assert all(planning_test["level"].count(level) == 100 for level in (3, 4, 5, 6))
    row = planning_test[0]
    assert row["task"] == "vsp_planning" and row["variant"] == "direct" and row["completion"] == []
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["text", "image", "text"]
    assert row["helper_images"] == [] and row["map_desc"] == [[2, -1, 1], [0, 0, 0], [0, 0, 0]]
    assert all(mirage_tasks.simulate_plan(r["map_desc"], r["answer"]) == "success" for r in planning_test)


def test_planning_test_prompt_follows_the_variant(official_root):
    cot = mirage_tasks.load_official_planning_test(official_root, variant="mirage-cot")
    assert mirage_tasks.prompt_text(cot[0]).endswith(COT_SUFFIX) and cot[0]["variant"] == "mirage-cot"


def test_reasoning_samples_read_with_helper_images_and_recovered_maps(reasoning_samples):
    assert len(reasoning_samples) == 10  # nine newline-terminated lines and a last one without a newline
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


def test_official_files_round_trip(tmp_path, official_root, planning_test, reasoning_samples):
    for name, dataset, source in [
        ("planning", planning_test, PLANNING_TEST),
        ("reasoning", reasoning_samples, REASONING_SAMPLES),
    ]:
        path = mirage_tasks.write_official_jsonl(dataset, tmp_path / name / "out.jsonl")
        back = mirage_tasks.read_official_jsonl(path)
        _same_rows(dataset, back)
        original = [json.loads(line) for line in (official_root / source).read_text().splitlines() if line.strip()]
        written = [json.loads(line) for line in path.read_text().splitlines()]
        for o, w in zip(original, written, strict=True):
            assert w["text_input"] == o["text_input"]
            assert w.get("text_output") == o.get("text_output")
            assert w.get("map_desc", o.get("map_desc")) == o.get("map_desc", w.get("map_desc"))
        # stored image bytes are copied, not re-encoded
        first = original[0]["image_input"]
        src = resolve_image_path(first, (official_root / source).parent, row=0, field="image_input")
        assert (path.parent / written[0]["image_input"]).read_bytes() == src.read_bytes()


@pytest.mark.parametrize("task", mirage_tasks.TASKS)
def test_generated_rows_round_trip(tmp_path, task):
    rows = mirage_tasks.make_examples(task, "mirage-cot", 6, levels="3-5", seed=4)
    path = mirage_tasks.write_official_jsonl(rows, tmp_path / "gen.jsonl", tmp_path / "root")
    _same_rows(rows, read_official_rows(path, tmp_path / "root"))
    _same_rows(mirage_tasks.rows_to_dataset(rows), mirage_tasks.read_official_jsonl(path, tmp_path / "root"))


def test_paths_resolve_from_the_original_repository_root_or_the_copied_folder(tmp_path, official_root):
    folder = official_root / "vsp_spatial_planning_test"
    path = "./data/vsp_spatial_planning/imgs_test/level3/img/31.png"
    expected = folder / "imgs_test/level3/img/31.png"
    assert resolve_image_path(path, folder, row=0, field="image_input") == expected
    prefix = "./data/vsp_spatial_planning/"
    assert resolve_image_path(path, folder, strip_prefix=prefix, row=0, field="image_input") == expected
    repo = tmp_path / "repo"
    (repo / "data/vsp_spatial_planning/imgs_test/level3/img").mkdir(parents=True)
    shutil.copy(expected, repo / "data/vsp_spatial_planning/imgs_test/level3/img/31.png")
    assert resolve_image_path(path, repo, row=0, field="image_input").read_bytes() == expected.read_bytes()
    assert resolve_image_path(str(expected), tmp_path, row=0, field="image_input") == expected
    with pytest.raises(TaskDataError, match="does not start with"):
        resolve_image_path(path, folder, strip_prefix="./other/", row=0, field="image_input")


# ---------------------------------------------------------------------------------------------------------
# Bad input: every error names the row and the field.
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
        (_good(image_input="./data/x/missing.png"), "row 1 field 'image_input': image file './data/x/missing.png' not found"),
        (_good(image_input="garbage.png"), "row 1 field 'image_input': cannot read image"),
        (_good(map_desc=[[1, 0, 1], [0, 0, 0], [0, 0, 2]]), "row 1 field 'map_desc': expected exactly one start \\(1\\), found 2"),
        (_good(map_desc=[[1, 0, 0], [0, 0, 0], [0, 0, 0]]), "row 1 field 'map_desc': expected exactly one goal \\(2\\), found 0"),
        (_good(map_desc=[[1, 0, 0], [0, 0], [0, 0, 2]]), "row 1 field 'map_desc': map is not rectangular"),
        (_good(map_desc=[[1, 0, 7], [0, 0, 0], [0, 0, 2]]), "row 1 field 'map_desc': unknown cell codes 7"),
        (_good(map_desc=[]), "row 1 field 'map_desc': expected a non-empty list"),
        (_good(text_output="<output_image><output_image>\\boxed{DR}", image_output="img.png"),
         "row 1 field 'image_output': text_output has 2 <output_image> placeholders but 1 images"),
        (_good(text_output="<output_image>\\boxed{DR}"), "row 1 field 'image_output': text_output has 1 <output_image> placeholders but 0"),
        (_good(image_input=["img.png", "img.png"]), "row 1 field 'image_input': text_input has 1 <image> markers but 2 images"),
        (_good(task="maze"), "row 1 field 'task': unknown task 'maze'"),
        (_good(variant="mirage"), "row 1 field 'variant': unknown variant 'mirage'"),
        (_good(text_input="What is this? <image>"), "row 1 field 'text_input': cannot tell the task"),
        (_good(text_input=None), "row 1 field 'text_input': missing"),
        ("{not json", "row 1 field 'line': not valid JSON"),
    ],
)  # fmt: skip
def test_bad_rows_raise_errors_naming_row_and_field(jsonl, record, message):
    path = jsonl(_good(), record)
    with pytest.raises(TaskDataError, match=message) as caught:
        mirage_tasks.read_official_jsonl(path)
    assert caught.value.row == 1


def test_rows_without_map_desc_are_tolerated(jsonl):
    (row,) = read_official_rows(jsonl(_good(map_desc=None)))
    assert row["map_desc"] == [[1, 0, 0], [0, 0, 0], [0, 0, 2]]  # read back from the picture
    (row,) = read_official_rows(jsonl(_good(map_desc=None)), infer_map=False)
    assert row["map_desc"] == [] and row["answer"] == ""
    assert isinstance(Image.open(jsonl(_good()).parent / "img.png"), Image.Image)
