"""Stage 0 (perception pretraining of the tiny base): its data and labels are exact, a few steps train and save a
loadable base, and the shipped pretrained base tells helper images apart where the random one does not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

import mirage_tasks
from mirage_tasks import map_from_image
from mirage_tasks.vsp import draw_path, random_map, shortest_path
from mirage_tiny import PRETRAINED_DIR, pretrained_base_path
from mirage_tiny.pretrain import (
    Stage0Config,
    cell_labels,
    grid_text,
    locate_text,
    make_example,
    parse_curriculum,
    pretrain_tiny_base,
    target_diversity,
)
from trainers.model_setup import load_model_and_processor, resolve_model_path

MAP = [[1, 0, -1], [0, 0, 2], [0, -1, 0]]  # S F H / F F G / F H F


def test_parse_curriculum_reads_phases_and_names_a_bad_one():
    assert parse_curriculum("3:400, 3-4:800,3-6:5") == [((3,), 400), ((3, 4), 800), ((3, 4, 5, 6), 5)]
    for bad in ("3-4", "3:x", "2-4:10", "3:0"):
        with pytest.raises(ValueError, match=f"curriculum phase '{bad.split(',')[0]}'"):
            parse_curriculum(bad)


def test_grid_text_and_cell_labels_are_exact():
    assert grid_text(MAP) == "S F H\nF F G\nF H F"
    labels = cell_labels(np.asarray(MAP, dtype=np.int8), "DRR")  # (0,0) -> (1,0) -> (1,1) -> (1,2) goal
    assert labels[:, 0].tolist() == [2, 0, 1, 0, 0, 3, 0, 1, 0]
    assert labels[:, 1].tolist() == [2, 0, 0, 3, 3, 0, 0, 0, 0]  # D leaves (0,0), R leaves (1,0) and (1,1)
    assert labels[:, 2].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and labels[:, 3].tolist() == [0, 1, 2] * 3
    wide = cell_labels(np.asarray([[1, 0, 0, 2]], dtype=np.int8), "")  # rows and columns, not the raster index
    assert wide[:, 2].tolist() == [0] * 4 and wide[:, 3].tolist() == [0, 1, 2, 3]


def test_locate_names_start_and_goal_from_one_at_the_top_left():
    assert locate_text(MAP) == "S 1,1 G 2,3"
    image, prompt, answer, labels = make_example(random.Random(5), "locate", 5, set())
    assert prompt == "Find the start and the goal." and image.size == (320, 320)
    grid = map_from_image(image)
    start = next((r, c) for r, row in enumerate(grid) for c, v in enumerate(row) if v == 1)
    assert answer.startswith(f"S {start[0] + 1},{start[1] + 1} G ")
    assert labels.shape == (25, 4) and int((labels[:, 0] == 2).sum()) == 1


def test_make_example_path_answer_is_what_the_arrows_show():
    rng = random.Random(3)
    for _ in range(20):
        image, prompt, answer, labels = make_example(rng, "path", 4, set())
        assert prompt == "Read the arrows."
        assert set(answer) <= set("LDRU") and image.size == (256, 256)
        assert int((labels[:, 1] > 0).sum()) == len(answer)  # one arrow per move: walks never revisit a cell
    image, prompt, answer, labels = make_example(rng, "grid", 3, set())
    assert prompt == "Read the map." and len(answer.splitlines()) == 3 and labels.shape == (9, 4)
    with pytest.raises(ValueError, match="unknown stage-0 task 'plan'"):
        make_example(rng, "plan", 3, set())


def test_make_example_never_draws_an_excluded_map():
    rng = random.Random(0)
    excluded = {mirage_tasks.map_key(random_map(random.Random(0), 3))}
    first = random_map(random.Random(0), 3)
    image, _, answer, _ = make_example(rng, "grid", 3, excluded)
    assert answer != grid_text(first)


def test_a_few_steps_train_the_tower_and_save_a_loadable_base(tmp_path, one_thread):
    config = Stage0Config(
        output_dir=str(tmp_path / "base"), curriculum="3:4", batch_size=4, log_every=2, monitor_maps=4, warmup_steps=2
    )
    result = pretrain_tiny_base(config, log=lambda line: None)
    history = result["history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    assert all("probe_loss" in h and "target_cosine" in h and "locate_L3" in h for h in history[1:])
    saved = json.loads((tmp_path / "base" / "stage0_log.json").read_text())
    assert saved["history"] == history and saved["config"]["curriculum"] == "3:4"
    model, processor = load_model_and_processor(str(tmp_path / "base"), 4, image_scale=0.4375)
    assert model.config.model_type == "mirage" and processor.image_scale == 0.4375
    # The vision tower trained: its weights differ from the random base's.
    random_base = tmp_path / "random"
    from mirage_tiny import build_tiny_base

    build_tiny_base(random_base, seed=0)
    fresh = Qwen2_5_VLForConditionalGeneration.from_pretrained(random_base)
    trained = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "base")
    key = "model.visual.patch_embed.proj.weight"
    assert not torch.equal(fresh.state_dict()[key], trained.state_dict()[key])

    # Deterministic: the same recipe writes the same weights.
    config.output_dir = str(tmp_path / "again")
    pretrain_tiny_base(config, log=lambda line: None)
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(value, again[name]) for name, value in trained.state_dict().items())


def test_unknown_task_is_refused_before_building(tmp_path):
    with pytest.raises(ValueError, match=r"unknown stage-0 task\(s\) \['plan'\]"):
        pretrain_tiny_base(Stage0Config(output_dir=str(tmp_path / "x"), tasks="grid,plan"))
    assert not (tmp_path / "x").exists()


def test_shipped_base_is_small_loads_by_name_and_tells_helper_images_apart(tiny_base_dir):
    assert resolve_model_path("tiny-pretrained") == pretrained_base_path() == str(PRETRAINED_DIR)
    assert sum(f.stat().st_size for f in PRETRAINED_DIR.iterdir()) <= 10 * 2**20
    rng = random.Random(7)
    helpers = []
    for _ in range(16):
        grid = np.asarray(random_map(rng, 4), dtype=np.int8)
        helpers.append(draw_path(grid, shortest_path(grid)))
    cosines = {}
    for name, folder in (("pretrained", PRETRAINED_DIR), ("random", Path(tiny_base_dir))):
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        cosines[name] = target_diversity(model, processor, helpers, 4, 0.4375)
    assert cosines["random"] > 0.95  # the random tower hardly tells the helper images apart
    assert cosines["pretrained"] < 0.9, cosines  # the pretrained one does


def test_stage0_recipe_parses_and_is_the_one_the_shipped_base_was_built_with():
    from trl import TrlParser

    recipe = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "tiny" / "stage0.yaml"
    (config,) = TrlParser((Stage0Config,)).parse_args_and_config(args=["--config", str(recipe)])
    assert config.output_dir == "mirage_tiny/pretrained" and config.cell_probe_weight == 1.0
    assert sum(steps for _, steps in parse_curriculum(config.curriculum)) == 1800
    from dataclasses import asdict

    shipped = json.loads((PRETRAINED_DIR / "stage0_log.json").read_text())["config"]
    assert shipped == asdict(config)
