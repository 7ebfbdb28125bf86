"""Supervised Mirage training: stage 1 (joint supervision with helper images) or stage 2 (text-only supervision).

One device (the embedded tiny base on a CPU; stage 2 starts from stage 1's output folder):

    python examples/sft_mirage.py --config examples/recipes/tiny/stage1.yaml
    python examples/sft_mirage.py --config examples/recipes/tiny/stage2.yaml

Several processes or GPUs, through accelerate (DDP, FSDP or DeepSpeed ZeRO-3):

    accelerate launch --config_file examples/accelerate_configs/zero3.yaml \\
        examples/sft_mirage.py --config examples/recipes/qwen2.5-vl-7b/stage1.yaml

Two processes on CPUs (gloo). accelerate 1.15's `--cpu` flag starts a single process whatever `--num_processes`
says; `--multi_gpu` starts torchrun, which uses gloo when there is no GPU, and `--use_cpu true` keeps the training
on the CPU even where GPUs exist:

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        examples/sft_mirage.py --config examples/recipes/tiny/stage1.yaml --use_cpu true --max_steps 4 \\
        --output_dir /tmp/mirage-s1 --print_weight_digest true

Every field of the YAML recipe can be overridden on the command line (`--max_steps 10`, `--use_peft`, ...). Fields
come from three dataclasses: `MirageScriptArguments` (data), `trainers.MirageSFTConfig` (stage, latent loss, every
`trl.SFTConfig`/`TrainingArguments` field) and `trl.ModelConfig` (model, dtype, LoRA).

Evaluation (`--eval_strategy steps`) uses the dataset's `dataset_test_split`, or a generated test split without
`dataset_name`; `--resume_from_checkpoint true` resumes from the last checkpoint in `output_dir`.

The output folder gets the Mirage model card (training recipe of every stage so far, training data, and, once
`examples/evaluate_mirage.py --model OUT --output-dir OUT/eval` has run, the results). `--push_to_hub true
--hub_model_id user/name` (token: `--hub_token` or `HF_TOKEN`; `--hub_private_repo true`) uploads the model page at
the end: weights, processor, remote code, generation config, card, nothing else (see docs/publishing.md);
`--hub_strategy checkpoint` also pushes the last checkpoint, with its optimizer state, under `last-checkpoint/`.

The model is a Mirage checkpoint, a Qwen2.5-VL checkpoint (converted on the fly, k = `latent_num_tokens`), or `tiny`
(the embedded tiny base). The data is a canonical task dataset (`dataset_name`: a folder written by
`examples/make_dataset.py` or a Hub id) or, without `dataset_name`, generated on the fly from the task suite, with the
official VSP test maps excluded. The output folder loads with `AutoModel.from_pretrained(dir, trust_remote_code=True)`;
LoRA adapters are merged into it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser

import mirage_tasks
from trainers import MirageSFTConfig

# Everything else (datasets, the model and trainer code, accelerate) is imported inside the functions that use it,
# so that `--help` and argument errors come back without loading them.


@dataclass
class MirageScriptArguments(ScriptArguments):
    """Where the training rows come from. `dataset_name` (a local folder or Hub id of a canonical task dataset) wins;
    without it, `num_train_examples` rows of `task`/`variant` are generated."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Canonical task dataset to train on: a folder written by examples/make_dataset.py or a Hub id. "
            "None: generate rows with the task suite (task, variant, num_train_examples, levels, dataset_seed)."
        },
    )
    task: str = field(
        default="vsp_planning", metadata={"help": "Task to generate.", "choices": list(mirage_tasks.TASKS)}
    )
    variant: str = field(
        default="mirage-direct",
        metadata={
            "help": "Completion layout; stage 1 needs a mirage-* variant.",
            "choices": list(mirage_tasks.VARIANTS),
        },
    )
    num_train_examples: int = field(default=512, metadata={"help": "Rows to generate."})
    num_eval_examples: int = field(
        default=64,
        metadata={
            "help": "With evaluation on (eval_strategy other than 'no') and no dataset_name: rows of a generated test "
            "split that shares no problem with the training rows."
        },
    )
    levels: str = field(default="3-6", metadata={"help": "Levels to generate (map side length): '3-6', '3,4'."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the generated rows (same seed, same rows)."})
    official_data_root: str | None = field(
        default=None,
        metadata={
            "help": "Official data folder or test_direct.jsonl whose VSP test maps are kept out of generated rows. "
            "None: $MIRAGE_OFFICIAL_DATA, else the copy shipped with mirage_tasks. A path that does not exist is an "
            "error."
        },
    )
    tiny_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Keep the embedded tiny base here between runs (None: rebuild it in a temporary folder)."},
    )
    merge_lora: bool = field(
        default=True,
        metadata={"help": "With --use_peft, merge the adapters and save a full model (Hub-ready) at the end."},
    )
    print_weight_digest: bool = field(
        default=False,
        metadata={"help": "Print a SHA-256 of the trained weights on every process (data-parallel replicas agree)."},
    )


def _split(splits, name: str, role: str, source: str):
    if name not in splits:
        raise ValueError(
            f"{source} has no {name!r} split for {role} (it has {sorted(splits)}); set --dataset_{role}_split"
        )
    return splits[name]


def load_datasets(script_args: MirageScriptArguments, evaluate: bool):
    """The training rows and, when `evaluate`, the evaluation rows: the stored dataset's `dataset_train_split` and
    `dataset_test_split`, or freshly generated train and test splits without any official test map (and without a
    problem in common)."""
    import datasets

    if script_args.dataset_name:
        splits = datasets.load_dataset(script_args.dataset_name, script_args.dataset_config)
        source = f"dataset {script_args.dataset_name}"
        train = _split(splits, script_args.dataset_train_split, "train", source)
        test = _split(splits, script_args.dataset_test_split, "test", source) if evaluate else None
        return train, test
    exclude = []
    if script_args.task.startswith("vsp"):  # the shipped copy is always there: a bad path must not train on test maps
        exclude = mirage_tasks.official_test_maps(script_args.official_data_root)
    rows = dict(levels=script_args.levels, seed=script_args.dataset_seed, exclude=exclude)
    if not evaluate:
        train = mirage_tasks.build_dataset(
            script_args.task, script_args.variant, script_args.num_train_examples, **rows
        )
        return train, None
    splits = mirage_tasks.build_splits(
        script_args.task, script_args.variant, script_args.num_train_examples, script_args.num_eval_examples, **rows
    )
    return splits["train"], splits["test"]


def resume_checkpoint(value: str | None, output_dir: str) -> str | None:
    """What `--resume_from_checkpoint` names: `true` (any boolean spelling) the last `checkpoint-N` in `output_dir`, as
    `Trainer.train(resume_from_checkpoint=True)` does; `false` or nothing, no resuming; else a checkpoint folder.
    Errors say what is missing before any model is loaded."""
    from transformers.trainer_utils import get_last_checkpoint

    if value is None or value.strip().lower() in ("", "false", "no", "0", "none"):
        return None
    if value.strip().lower() in ("true", "yes", "1"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            found = sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else "the folder does not exist"
            raise FileNotFoundError(
                f"--resume_from_checkpoint true: no checkpoint-N folder in output_dir {output_dir} (found: {found}); "
                "save checkpoints with --save_strategy steps or epoch, or pass a checkpoint folder"
            )
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {value}: no such folder; pass a checkpoint-N folder of an earlier run, or true "
            f"for the last one in output_dir ({output_dir})"
        )
    return value


def weight_digest(model) -> str:
    """SHA-256 over every parameter (sorted by name), as float32 bytes."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(script_args: MirageScriptArguments, training_args: MirageSFTConfig, model_args: ModelConfig) -> None:
    import torch

    from trainers import MirageSFTTrainer, load_model_and_processor, lora_config_from

    if model_args.model_name_or_path is None:
        raise ValueError("set model_name_or_path: a Mirage or Qwen2.5-VL checkpoint, or 'tiny'")
    resume = resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    train_rows, eval_rows = load_datasets(script_args, evaluate=training_args.eval_strategy != "no")
    model_kwargs = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        model_kwargs["dtype"] = getattr(torch, model_args.dtype)
    if model_args.attn_implementation is not None:
        model_kwargs["attn_implementation"] = model_args.attn_implementation
    model, processor = load_model_and_processor(
        model_args.model_name_or_path,
        training_args.latent_num_tokens,
        tiny_cache_dir=script_args.tiny_cache_dir,
        image_scale=training_args.image_scale,
        **model_kwargs,
    )
    peft_config = lora_config_from(model_args)

    trainer = MirageSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=processor,
        peft_config=peft_config,
    )
    if script_args.dataset_name:
        trainer.hub_datasets = [script_args.dataset_name]  # named on the card (in its metadata when a Hub id)
    trainer.train(resume_from_checkpoint=resume)

    if script_args.print_weight_digest:  # before saving: merging LoRA on the main process changes its weights
        print_weight_digest(trainer)
    save_final_model(trainer, processor, merge=peft_config is not None and script_args.merge_lora)
    if trainer.accelerator.is_main_process:
        print(f"saved to {training_args.output_dir}", flush=True)


def save_final_model(trainer, processor, merge: bool) -> None:
    """End of a run (SFT or GRPO): write `output_dir` as a Hub-ready Mirage folder with its model card, and push it
    with `--push_to_hub`. With `merge`, LoRA adapters are merged into a full model first, and that model (not the
    adapters Trainer would save) is what is written and pushed."""
    from trainers import save_for_hub

    args = trainer.args
    if merge:
        if trainer.accelerator.is_main_process:
            save_for_hub(trainer.accelerator.unwrap_model(trainer.model), processor, args.output_dir)
            trainer.create_model_card()
            if args.push_to_hub:
                from hub_cards import push_model_folder

                push_model_folder(
                    args.output_dir, trainer.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                    revision=args.hub_revision, commit_message="End of training",
                )  # fmt: skip
        trainer.accelerator.wait_for_everyone()
    else:
        trainer.save_model(args.output_dir)  # with --push_to_hub, also pushes the page (card included)
        if not args.push_to_hub:
            trainer.create_model_card()


def print_weight_digest(trainer) -> None:
    """Print this process's weight digest (the multi-process tests compare them across processes)."""
    from accelerate import PartialState

    state = PartialState()
    digest = weight_digest(trainer.accelerator.unwrap_model(trainer.model))
    print(f"[process {state.process_index}/{state.num_processes}] weights sha256 {digest}", flush=True)


if __name__ == "__main__":
    parser = TrlParser((MirageScriptArguments, MirageSFTConfig, ModelConfig))
    main(*parser.parse_args_and_config())
