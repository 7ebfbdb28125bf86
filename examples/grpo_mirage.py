"""Stage 3 of Mirage: GRPO through the latent loop (reward 0.9 x accuracy + 0.1 x format, KL on text tokens only).

One device (the tiny model that stage 2 wrote, on a CPU):

    python examples/grpo_mirage.py --config examples/recipes/tiny/grpo.yaml

Several processes or GPUs, through accelerate (DDP, FSDP or DeepSpeed ZeRO-3):

    accelerate launch --config_file examples/accelerate_configs/zero3.yaml \\
        examples/grpo_mirage.py --config examples/recipes/qwen2.5-vl-7b/grpo.yaml

Two processes on CPUs (gloo; see examples/sft_mirage.py for why `--multi_gpu` and not `--cpu`):

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        examples/grpo_mirage.py --config examples/recipes/tiny/grpo.yaml --use_cpu true --max_steps 2

Every field of the YAML recipe can be overridden on the command line. Fields come from three dataclasses: the data
arguments shared with `examples/sft_mirage.py` (`MirageScriptArguments`), `trainers.MirageGRPOConfig` (rescoring mode,
rewards, every `trl.GRPOConfig` field) and `trl.ModelConfig` (model, dtype, LoRA).

The model is a Mirage checkpoint (usually stage 2's output). A Qwen2.5-VL checkpoint or `tiny` is converted on the fly,
which needs `--use_peft` (the reference model is then the adapter-free policy) or `--beta 0`. The prompts come from a
canonical task dataset or are generated (official VSP test maps excluded); only `prompt`, `images` and the columns the
rewards read are used. The output folder loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)` and holds
the model card; LoRA adapters are merged into it, and `--push_to_hub true` pushes that merged model at the end, as
`examples/sft_mirage.py` does.
"""

from __future__ import annotations

import os
import sys

import torch
from trl import ModelConfig, TrlParser

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the data arguments live next to this script
from sft_mirage import (  # noqa: E402
    MirageScriptArguments,
    load_datasets,
    print_weight_digest,
    resume_checkpoint,
    save_final_model,
)

from trainers import MirageGRPOConfig, MirageGRPOTrainer, lora_config_from  # noqa: E402

# Columns GRPO never reads: the target completion (rollouts replace it) and the helper images (stage 1 only).
UNUSED_COLUMNS = ("completion", "helper_images")


def main(script_args: MirageScriptArguments, training_args: MirageGRPOConfig, model_args: ModelConfig) -> None:
    if model_args.model_name_or_path is None:
        raise ValueError("set model_name_or_path: a Mirage checkpoint (stage 2's output), a Qwen2.5-VL one, or 'tiny'")
    resume = resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    # The trainer loads the model itself, after checking that its reference model will be a Mirage model.
    model_kwargs = dict(training_args.model_init_kwargs or {}, revision=model_args.model_revision)
    if model_args.dtype not in (None, "auto"):
        model_kwargs["dtype"] = getattr(torch, model_args.dtype)
    if model_args.attn_implementation is not None:
        model_kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.model_name_or_path == "tiny" and script_args.tiny_cache_dir:
        model_kwargs["tiny_cache_dir"] = script_args.tiny_cache_dir
    training_args.model_init_kwargs = model_kwargs
    peft_config = lora_config_from(model_args)
    train_rows, eval_rows = (
        None if rows is None else rows.remove_columns([c for c in UNUSED_COLUMNS if c in rows.column_names])
        for rows in load_datasets(script_args, evaluate=training_args.eval_strategy != "no")
    )
    trainer = MirageGRPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=resume)
    if script_args.print_weight_digest:  # before saving: merging LoRA on the main process changes its weights
        print_weight_digest(trainer)
    save_final_model(trainer, trainer.processing_class, merge=peft_config is not None and script_args.merge_lora)
    if trainer.accelerator.is_main_process:
        print(f"saved to {training_args.output_dir}", flush=True)


if __name__ == "__main__":
    parser = TrlParser((MirageScriptArguments, MirageGRPOConfig, ModelConfig))
    main(*parser.parse_args_and_config())
