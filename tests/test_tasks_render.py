"""Rendering: the fast tile renderer equals gymnasium 0.29.1 and the official PNGs pixel for pixel."""

import json
import os
import random
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
    resolve_image_path,
    shipped_planning_records,
)
from mirage_tasks.vsp import (
    draw_path,
    map_from_image,
    map_from_key,
    map_key,
    parse_moves,
    random_map,
    render_array,
    render_map,
    render_state,
    render_with_gymnasium,
    solve_map,
    trace_plan,
    validate_map_desc,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "official"


def _official_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mismatched_pictures(jsonl):
    """The official planning pictures of ``jsonl`` that differ from our render of their map (by image path)."""
    rows = _official_rows(jsonl)
    mismatched = []
    for i, row in enumerate(rows):
        path = resolve_image_path(row["image_input"], jsonl.parent, row=i, field="image_input")
        official = np.asarray(Image.open(path).convert("RGB"))
        if not np.array_equal(official, np.asarray(render_map(row["map_desc"]))):
            mismatched.append(row["image_input"])
    return rows, mismatched


def test_official_test_pictures_render_pixel_exact():
    rows, mismatched = _mismatched_pictures(FIXTURES / PLANNING_TEST)
    assert sorted(len(r["map_desc"]) for r in rows) == [3, 4, 5, 5, 6]
    assert mismatched == []


def _full_official_folder():
    """The complete official data folder where this workspace has one ($MIRAGE_OFFICIAL_DATA, else ../shared beside
    the repository); ``None`` elsewhere (a user's clone)."""
    for candidate in (os.environ.get(OFFICIAL_ENV), REPO.parent / "shared" / "data" / "official"):
        if candidate and (Path(candidate) / PLANNING_TEST).is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_full_official_folder() is None, reason="the complete official data folder is not here")
def test_every_official_test_picture_renders_pixel_exact_and_the_shipped_copy_is_complete(monkeypatch):
    """The one test that reads the complete official folder (the fixtures hold five of its 400 rows)."""
    folder = _full_official_folder()
    rows, mismatched = _mismatched_pictures(folder / PLANNING_TEST)
    assert len(rows) == 400 and mismatched == []
    assert shipped_planning_records() == rows
    from_folder = mirage_tasks.load_official_planning_test(folder)
    monkeypatch.delenv(OFFICIAL_ENV, raising=False)
    shipped = mirage_tasks.load_official_planning_test()
    for a, b in zip(from_folder, shipped, strict=True):
        assert {k: v for k, v in a.items() if k != "images"} == {k: v for k, v in b.items() if k != "images"}
        assert np.array_equal(np.asarray(a["images"][0]), np.asarray(b["images"][0]))


def test_fast_renderer_equals_gymnasium_on_random_states():
    rng = random.Random(7)
    outcomes = set()
    for _ in range(60):
        map_desc = random_map(rng, rng.randint(3, 8))
        moves = "".join(rng.choice("LDRU") for _ in range(rng.randint(0, 8)))
        grid = validate_map_desc(map_desc)
        steps = trace_plan(grid, moves)
        outcomes.add(steps[-1].code if steps else None)
        played = "".join(s.move for s in steps)
        ours = np.asarray(render_state(grid, steps, len(steps)))
        assert np.array_equal(ours, render_with_gymnasium(map_desc, played)), (map_desc, played)
    assert {-1, 0} <= outcomes  # the cracked-hole and plain-ice player tiles were both exercised


def test_renderer_draws_goal_reached_and_blocked_states_like_gymnasium():
    map_desc = [[1, 0, 0], [0, -1, 0], [0, 0, 2]]
    for moves in ["RRDD", "L", "U", "RRR", "DDRR", "RD"]:
        grid = validate_map_desc(map_desc)
        steps = trace_plan(grid, moves)
        ours = np.asarray(render_state(grid, steps, len(steps)))
        assert np.array_equal(ours, render_with_gymnasium(map_desc, moves)), moves


def test_picture_size_follows_gymnasium_window():
    for side in range(3, 9):
        assert render_array(random_map(random.Random(side), side)).shape == (64 * side, 64 * side, 3)


def test_official_reasoning_step_images_are_our_renders():
    """Every map_NxN_step_k.png of the official samples is the state after k moves of the plan, as we draw it."""
    path = FIXTURES / REASONING_SAMPLES
    checked = 0
    for i, row in enumerate(_official_rows(path)):
        first = resolve_image_path(row["image_input"], path.parent, row=i, field="image_input")
        map_desc = map_from_image(Image.open(first))
        assert map_desc is not None
        grid = validate_map_desc(map_desc)
        plan = row["text_input"].split("Full Action Plan: ")[1].split("\n")[0]
        steps = trace_plan(grid, parse_moves(plan))
        for k in range(len(steps) + 1):
            step_file = first.with_name(first.name.replace("step_0", f"step_{k}"))
            official = np.asarray(Image.open(step_file).convert("RGB"))
            assert np.array_equal(official, np.asarray(render_state(grid, steps, k))), (step_file, k)
            checked += 1
    assert checked == 8  # two samples of three moves each, plus their starting pictures


def test_map_from_image_inverts_rendering_and_rejects_other_pictures():
    rng = random.Random(3)
    for _ in range(20):
        map_desc = random_map(rng, rng.randint(3, 8))
        assert map_from_image(render_map(map_desc)) == map_desc
        grid = validate_map_desc(map_desc)
        steps = trace_plan(grid, "".join(rng.choice("LDRU") for _ in range(6)))
        for k in range(len(steps) + 1):  # the player anywhere, facing any way (even back on the start)
            assert map_from_image(render_state(grid, steps, k)) == map_desc
    start_facing_up = [[0, 0, 0], [1, 0, 0], [0, 0, 2]]
    assert (
        map_from_image(
            render_state(validate_map_desc(start_facing_up), trace_plan(validate_map_desc(start_facing_up), "DU"), 2)
        )
        == start_facing_up
    )
    noisy = np.asarray(render_map(map_desc)).copy()
    noisy[5, 5] ^= 1
    assert map_from_image(Image.fromarray(noisy)) is None
    assert map_from_image(Image.new("RGB", (100, 100))) is None


def test_planning_helper_draws_red_arrows_only_on_the_path():
    map_desc = [[1, 0, 0, 0], [0, -1, -1, 0], [0, 0, 0, 0], [0, -1, 0, 2]]
    moves = solve_map(map_desc)
    base = np.asarray(render_map(map_desc)).astype(int)
    helper = np.asarray(draw_path(map_desc, moves)).astype(int)
    changed = np.argwhere((base != helper).any(-1))
    assert len(changed) > 0
    red = (helper[..., 0] == 255) & (helper[..., 1] == 0) & (helper[..., 2] == 0)
    assert red[tuple(changed.T)].all()  # every changed pixel is arrow red
    grid = validate_map_desc(map_desc)
    path_cells = {(0, 0)} | {s.cell for s in trace_plan(grid, moves)}
    touched = {(int(y) // 64, int(x) // 64) for y, x in changed}
    assert touched <= path_cells and len(touched) == len(path_cells)


def test_map_key_round_trips_and_bad_keys_name_the_letter():
    rng = random.Random(5)
    for side in range(3, 9):
        map_desc = random_map(rng, side)
        assert map_from_key(map_key(map_desc)) == map_desc
    with pytest.raises(TaskDataError, match="row 7 field 'map': unknown map letters X in 'SFX/FFG'"):
        map_from_key("SFX/FFG", row=7)
    with pytest.raises(TaskDataError, match="field 'map': expected exactly one goal"):
        map_from_key("SFF/FFF")
