"""examples/grpo_mirage.py: the GRPO recipes parse (the 7B one with the paper's RL settings), and two CPU processes
(gloo) run the tiny recipe with LoRA, end with identical weights and write a merged folder that loads as remote code."""

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

from trainers import MirageGRPOConfig
from trainers.model_setup import check_hub_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "grpo_mirage.py"
RECIPES = sorted((REPO / "examples" / "recipes").glob("*/grpo.yaml"))


def parse(recipe: Path, *extra: str):
    from trl import ModelConfig, TrlParser

    namespace = runpy.run_path(str(SCRIPT), run_name="grpo_mirage")
    parser = TrlParser((namespace["MirageScriptArguments"], MirageGRPOConfig, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(recipe), *extra], fail_with_unknown_args=True)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_grpo_recipes_parse(recipe: Path) -> None:
    script_args, args, model_args = parse(recipe)
    assert args.num_generations == 5 and args.beta == 0.01 and args.loss_type == "grpo"
    assert list(args.reward_funcs) == ["accuracy", "format"] and list(args.reward_weights) == [0.9, 0.1]
    assert args.latent_rescoring == "chain" and args.remove_unused_columns is False
    assert args.generation_batch_size % args.num_generations == 0
    if recipe.parent.name == "qwen2.5-vl-7b":
        assert args.learning_rate == 1e-6 and model_args.dtype == "bfloat16"
        assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    else:
        assert model_args.model_name_or_path == "outputs/tiny-stage2" and script_args.task == "vsp_planning"


def test_two_cpu_processes_run_the_tiny_recipe_with_lora(tiny_mirage_dir: str, tmp_path: Path) -> None:
    output = tmp_path / "grpo"
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), "--config", "examples/recipes/tiny/grpo.yaml", "--use_cpu", "true",
        "--model_name_or_path", tiny_mirage_dir, "--max_steps", "2", "--num_train_examples", "8",
        "--max_completion_length", "8", "--per_device_train_batch_size", "5",
        "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8",
        "--output_dir", str(output), "--print_weight_digest", "true",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    digests = dict(re.findall(r"\[process (\d)/2\] weights sha256 ([0-9a-f]{64})", log))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], log[-3000:]
    assert "'reward'" in log and "'kl'" in log  # TRL's GRPO metrics were logged

    assert not (output / "adapter_config.json").exists()  # merged, not an adapter folder
    check_hub_folder(output)  # safetensors, the remote-code files and auto_map
    model = AutoModel.from_pretrained(str(output), trust_remote_code=True)
    start = AutoModel.from_pretrained(tiny_mirage_dir, trust_remote_code=True)
    assert model.config.model_type == "mirage" and set(model.state_dict()) == set(start.state_dict())
    assert all(torch.isfinite(p).all() for p in model.parameters())
