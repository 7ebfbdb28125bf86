"""examples/sft_mirage.py: recipes parse, two CPU processes (gloo) end with identical weights, and stage 2 with LoRA
continues from stage 1's folder and writes a merged remote-code folder."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from trainers import MirageSFTConfig

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "sft_mirage.py"
# Recipes of examples/sft_mirage.py (stage 0 has its own script, examples/pretrain_tiny_base.py).
RECIPES = sorted((REPO / "examples" / "recipes").glob("*/stage[12].yaml"))


def script_namespace() -> dict:
    return runpy.run_path(str(SCRIPT), run_name="sft_mirage")


def run(command: list[str], tmp_path: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipes_parse(recipe: Path) -> None:
    from trl import ModelConfig, TrlParser

    namespace = script_namespace()
    parser = TrlParser((namespace["MirageScriptArguments"], MirageSFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        args=["--config", str(recipe)], fail_with_unknown_args=True
    )
    assert training_args.latent_stage == int(recipe.stem[-1])
    assert training_args.remove_unused_columns is False
    # Stage 1 converts a base and chooses k and the image resize; stage 2 takes both from the stage-1 model.
    stage1 = training_args.latent_stage == 1
    assert training_args.latent_num_tokens == (4 if stage1 else None)
    assert training_args.image_scale == (0.4375 if stage1 and recipe.parent.name == "tiny" else None)
    if recipe.parent.name == "qwen2.5-vl-7b":  # the paper's hyperparameters
        assert training_args.learning_rate == 1e-5 and training_args.weight_decay == 0.01
        assert training_args.warmup_steps == 10 and training_args.num_train_epochs == 10
        assert training_args.per_device_train_batch_size * 8 * training_args.gradient_accumulation_steps == 8
        assert training_args.latent_text_weight == 0.1 and training_args.latent_loss == "cosine"
    else:
        assert model_args.model_name_or_path in ("tiny-pretrained", "outputs/tiny-stage1")


def test_every_config_field_has_help() -> None:
    from dataclasses import fields

    for cls in (MirageSFTConfig, script_namespace()["MirageScriptArguments"]):
        own = [
            f
            for f in fields(cls)
            if f.name.startswith("latent_") or f.name == "image_scale" or cls is not MirageSFTConfig
        ]
        assert own and all(f.metadata.get("help") for f in own), [f.name for f in own if not f.metadata.get("help")]


def test_two_cpu_processes_end_with_identical_weights_then_stage2_with_lora(tmp_path: Path) -> None:
    """Stage 1 under `accelerate launch` with two gloo processes on the CPU (accelerate's `--cpu` flag alone starts a
    single process; `--multi_gpu` starts torchrun, which falls back to gloo without GPUs), then stage 2 with LoRA
    from its folder in one process."""
    stage1 = tmp_path / "stage1"
    output = run(
        [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            str(SCRIPT), "--config", "examples/recipes/tiny/stage1.yaml", "--use_cpu", "true",
            "--max_steps", "3", "--num_train_examples", "32", "--output_dir", str(stage1),
            "--tiny_cache_dir", str(tmp_path / "tiny"), "--print_weight_digest", "true",
        ],
        tmp_path,
    )  # fmt: skip
    digests = dict(re.findall(r"\[process (\d)/2\] weights sha256 ([0-9a-f]{64})", output))
    assert set(digests) == {"0", "1"}, output[-3000:]
    assert digests["0"] == digests["1"]

    stage2 = tmp_path / "stage2"
    run(
        [
            sys.executable, str(SCRIPT), "--config", "examples/recipes/tiny/stage2.yaml", "--use_cpu", "true",
            "--model_name_or_path", str(stage1), "--max_steps", "2", "--num_train_examples", "16",
            "--output_dir", str(stage2), "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
        ],
        tmp_path,
    )  # fmt: skip
    assert not (stage2 / "adapter_config.json").exists()  # merged, not an adapter folder
    merged = AutoModel.from_pretrained(str(stage2), trust_remote_code=True)
    before = AutoModel.from_pretrained(str(stage1), trust_remote_code=True)
    assert merged.config.model_type == "mirage"
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, before.state_dict()[n])]
    assert changed and all("language_model" in n and "proj" in n for n in changed), changed
