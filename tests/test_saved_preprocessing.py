"""Preprocessing and k travel with the model: the image resize is a saved processor setting, the training config only
chooses it (and k) when a Qwen2.5-VL checkpoint is converted, and a processor that disagrees with its model about k
is refused when saved or loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from train_helpers import TINY_IMAGE_SCALE, fast_args, load

import mirage_tasks
from modeling_mirage import MirageForConditionalGeneration, MirageProcessor
from trainers import MirageSFTTrainer, load_model_and_processor, save_for_hub

pytestmark = pytest.mark.usefixtures("one_thread")

# Runs in a fresh interpreter outside the repository, offline: only the saved folder's remote code defines the
# processor there.
FRESH_PROCESS = """
import json, sys
import torch
from PIL import Image
from transformers import AutoProcessor

folder, request, result = sys.argv[1:]
request = json.load(open(request))
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
prompts = processor(
    text=request["prompts"], images=[Image.open(p) for p in request["images"]], padding=True, return_tensors="pt"
)
helpers = processor.process_helper_images([[Image.open(p)] for p in request["helper_images"]])
torch.save(
    {"image_scale": processor.image_scale, "k": processor.latent_num_tokens, **dict(prompts), **dict(helpers)},
    result,
)
"""


def test_folder_saved_by_training_feeds_a_fresh_autoprocessor_what_training_fed(tiny_base_dir, tmp_path):
    """Convert with MirageSFTConfig(image_scale=...), train a step, save; in a fresh process `AutoProcessor` (remote
    code) turns the same raw input and helper images into exactly the tensors the training collator fed."""
    dataset = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 4, levels="3-4", seed=2)
    args = fast_args(tmp_path / "run", latent_stage=1, max_steps=1, image_scale=TINY_IMAGE_SCALE)
    trainer = MirageSFTTrainer(model=tiny_base_dir, args=args, train_dataset=dataset)  # a Qwen2.5-VL conversion
    assert trainer.processing_class.image_scale == TINY_IMAGE_SCALE
    trainer.train()
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    assert json.loads((folder / "processor_config.json").read_text())["image_scale"] == TINY_IMAGE_SCALE

    # What training fed: the trainer's own collator on the trainer's own (undecoded) rows.
    rows = [trainer.train_dataset[i] for i in range(len(dataset))]
    fed = trainer.data_collator(rows)
    # The same raw images as files (the PNG bytes the dataset stores), and the rendered prompts.
    request = {"prompts": [], "images": [], "helper_images": []}
    for i, row in enumerate(rows):
        for key, name in (("images", "image"), ("helper_images", "helper")):
            path = tmp_path / f"{name}{i}.png"
            path.write_bytes(row[key][0]["bytes"])
            request[key].append(str(path))
        request["prompts"].append(
            trainer.processing_class.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        )
    (tmp_path / "request.json").write_text(json.dumps(request))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), str(tmp_path / "request.json"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    fresh = torch.load(tmp_path / "out.pt")

    assert fresh["image_scale"] == TINY_IMAGE_SCALE and fresh["k"] == trainer.model.config.latent_num_tokens
    sides = [len(m) for m in dataset["map_desc"]]
    assert fed["image_grid_thw"].tolist() == [[1, 2 * s, 2 * s] for s in sides]  # scaled: one token per map cell
    for key in (
        "pixel_values",
        "image_grid_thw",
        "helper_pixel_values",
        "helper_image_grid_thw",
        "helper_image_counts",
    ):
        assert torch.equal(fresh[key], fed[key]), key
    # The prompt tokens too (training pads and appends the completion: compare the start of each row's real tokens).
    for r in range(len(rows)):
        prompt = fresh["input_ids"][r][fresh["attention_mask"][r].bool()]
        trained = fed["input_ids"][r][fed["attention_mask"][r].bool()]
        assert torch.equal(trained[: prompt.numel()], prompt), r


def test_a_mirage_checkpoint_keeps_its_image_scale(tiny_mirage_dir, tmp_path):
    """A saved processor's image_scale is used when the config leaves it unset, and a different one is refused (by
    the loader and by the trainer given objects) instead of training on images of another size."""
    model, processor = load(tiny_mirage_dir)
    folder = save_for_hub(model, processor, tmp_path / "scaled")
    assert load_model_and_processor(str(folder))[1].image_scale == TINY_IMAGE_SCALE
    assert load_model_and_processor(str(folder), image_scale=TINY_IMAGE_SCALE)[1].image_scale == TINY_IMAGE_SCALE
    message = r"image_scale=0.5 was asked for, but the model's processor has image_scale=0.4375"
    with pytest.raises(ValueError, match=rf"'{folder}': {message}"):
        load_model_and_processor(str(folder), image_scale=0.5)

    dataset = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 2, levels=3, seed=0)
    with pytest.raises(ValueError, match=rf"MirageSFTConfig: {message}"):
        MirageSFTTrainer(
            model=model,
            args=fast_args(tmp_path / "run", image_scale=0.5),
            train_dataset=dataset,
            processing_class=processor,
        )
    with pytest.raises(ValueError, match=rf"'{folder}': {message}"):
        MirageSFTTrainer(model=str(folder), args=fast_args(tmp_path / "run", image_scale=0.5), train_dataset=dataset)
    # 1 means no resize, the same as None.
    plain = MirageProcessor.from_pretrained(tiny_mirage_dir)
    MirageSFTTrainer(
        model=model, args=fast_args(tmp_path / "run", image_scale=1.0), train_dataset=dataset, processing_class=plain
    )


def test_k_comes_from_the_model_and_processor(tiny_base_dir, tiny_mirage_dir, tmp_path):
    """The config's latent_num_tokens chooses k at conversion (None: 4) and otherwise may only repeat it."""
    dataset = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 2, levels=3, seed=0)
    converted = MirageSFTTrainer(model=tiny_base_dir, args=fast_args(tmp_path / "a"), train_dataset=dataset)
    assert converted.model.config.latent_num_tokens == converted.processing_class.latent_num_tokens == 4
    converted = MirageSFTTrainer(
        model=tiny_base_dir, args=fast_args(tmp_path / "b", latent_num_tokens=2), train_dataset=dataset
    )
    assert converted.model.config.latent_num_tokens == converted.processing_class.latent_num_tokens == 2
    kept = MirageSFTTrainer(model=tiny_mirage_dir, args=fast_args(tmp_path / "c"), train_dataset=dataset)
    assert kept.model.config.latent_num_tokens == 4
    with pytest.raises(ValueError, match="latent_num_tokens=4, but latent_num_tokens=3 was asked for"):
        MirageSFTTrainer(
            model=tiny_mirage_dir, args=fast_args(tmp_path / "d", latent_num_tokens=3), train_dataset=dataset
        )


def test_a_processor_with_another_k_is_refused_when_saved_and_when_loaded(tiny_base_dir, tiny_mirage_dir, tmp_path):
    model = MirageForConditionalGeneration.from_pretrained(tiny_mirage_dir)  # k = 4
    wrong = MirageProcessor.from_base(tiny_base_dir, latent_num_tokens=3)
    message = "the model config has latent_num_tokens=4 but the processor has latent_num_tokens=3"
    with pytest.raises(ValueError, match=rf"save_for_hub\('{tmp_path / 'hub'}'\): {message}"):
        save_for_hub(model, wrong, tmp_path / "hub")
    assert not (tmp_path / "hub").exists()  # refused before writing anything

    # A folder written without that check (model and processor saved separately).
    folder = tmp_path / "mismatched"
    model.save_pretrained(folder)
    wrong.save_pretrained(folder)
    with pytest.raises(ValueError, match=rf"{folder}: {message}"):
        MirageProcessor.from_pretrained(folder)
    with pytest.raises(ValueError, match=message):
        load_model_and_processor(str(folder))
