"""Generate a task dataset with helper images, write it with a dataset card, and optionally push it to the Hub.

    python examples/make_dataset.py --task vsp_planning --variant mirage-direct \
        --n-train 1000 --n-test 200 --levels 3-6 --seed 0 --output-dir data/vsp_planning-mirage-direct \
        [--push-to-hub user/vsp-planning-mirage-direct [--private] [--hub-token TOKEN]]

The output folder is laid out like a Hub dataset repository: ``data/train-*.parquet``, ``data/test-*.parquet`` and
a ``README.md`` dataset card; ``datasets.load_dataset(output_dir)`` reads it back. The same seed always gives the
same data. Train and test never share a map, and neither contains a map of the official VSP planning test set
(``--exclude-official``: on by default, from the copy of the test set shipped with ``mirage_tasks``).

``--push-to-hub`` uploads that folder's splits (images embedded in the parquet files) and card in one commit. The
token comes from ``--hub-token`` or the environment (``HF_TOKEN``, or ``hf auth login``) and is never printed.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import HfArgumentParser

import mirage_tasks
from hub_cards.dataset_card import push_dataset_folder, render_dataset_card
from mirage_tasks.official import PLANNING_TEST, official_path


@dataclass
class MakeDatasetArguments:
    """Command-line options of ``make_dataset.py``."""

    task: str = field(metadata={"help": "Task to generate.", "choices": list(mirage_tasks.TASKS)})
    variant: str = field(
        metadata={"help": "Training variant (completion layout).", "choices": list(mirage_tasks.VARIANTS)}
    )
    output_dir: str = field(metadata={"help": "Folder to write the parquet splits and README.md card into."})
    n_train: int = field(default=1000, metadata={"help": "Rows in the train split."})
    n_test: int = field(default=200, metadata={"help": "Rows in the test split."})
    levels: str = field(default="3-6", metadata={"help": "Levels (map side length / grid size): '3-6', '3,5,8'."})
    seed: int = field(default=0, metadata={"help": "Random seed; the same seed gives the same data."})
    exclude_official: str = field(
        default="auto",
        metadata={
            "help": "Official planning test whose maps must not be generated: the official data folder or its "
            "test_direct.jsonl; 'auto' = $MIRAGE_OFFICIAL_DATA if set, else the copy shipped with mirage_tasks; "
            "'none' = exclude nothing."
        },
    )
    helper_step: str = field(
        default="decisive",
        metadata={"help": "vsp_reasoning helper image: 'decisive' step or 'random' step (as the official samples).",
                  "choices": ["decisive", "random"]},
    )  # fmt: skip
    write_official: bool = field(
        default=False, metadata={"help": "Also write each split in the official JSONL format under official/."}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub dataset repo id to push data and card to."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token with write access (default: $HF_TOKEN or the saved login)."}
    )


def official_exclusion(spec: str) -> tuple[list, str]:
    """The official test maps to exclude for ``--exclude-official`` and a sentence saying what was done."""
    if spec == "none":
        return [], "not excluding official test maps (--exclude-official none)"
    root = None if spec == "auto" else spec
    path = official_path(PLANNING_TEST, root)
    maps = mirage_tasks.official_test_maps(root)
    return maps, f"excluding the {len(maps)} official test maps of {path or 'the copy shipped with mirage_tasks'}"


def command_line(args: MakeDatasetArguments) -> str:
    """The command that regenerates this data (shown in the dataset card)."""
    parts = ["python", "examples/make_dataset.py", "--task", args.task, "--variant", args.variant]
    parts += ["--n-train", str(args.n_train), "--n-test", str(args.n_test), "--levels", args.levels]
    parts += ["--seed", str(args.seed), "--helper-step", args.helper_step, "--output-dir", args.output_dir]
    return shlex.join(parts)


def main(argv: list[str] | None = None) -> datasets.DatasetDict:
    """Run the command line; returns the generated splits."""
    (args,) = HfArgumentParser(MakeDatasetArguments).parse_args_into_dataclasses(args=argv)
    exclude, note = official_exclusion(args.exclude_official)
    print(note, file=sys.stderr)
    splits = mirage_tasks.build_splits(
        args.task,
        args.variant,
        args.n_train,
        args.n_test,
        args.levels,
        args.seed,
        exclude,
        helper_step=args.helper_step,
        progress=True,
    )
    out = Path(args.output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        split.to_parquet(str(out / "data" / f"{name}-00000-of-00001.parquet"))
        if args.write_official:
            mirage_tasks.write_official_jsonl(split, out / "official" / f"{name}.jsonl")
    example = mirage_tasks.completion_text(splits["train"][0] if len(splits["train"]) else splits["test"][0])
    card = render_dataset_card(
        task=args.task,
        variant=args.variant,
        split_sizes={name: len(split) for name, split in splits.items()},
        levels=args.levels,
        seed=args.seed,
        example_completion=example,
        command=command_line(args),
        excluded_official=len(exclude),
        repo_id=args.push_to_hub or args.output_dir,
        features=splits["train"].features,
        helper_step=args.helper_step,
    )
    card.save(out / "README.md")
    print(
        f"wrote {', '.join(f'{len(s)} {n}' for n, s in splits.items())} rows and README.md to {out}", file=sys.stderr
    )
    if args.push_to_hub:
        push_dataset_folder(out, args.push_to_hub, private=args.private, token=args.hub_token)
        print(f"pushed data and card to https://huggingface.co/datasets/{args.push_to_hub}", file=sys.stderr)
    return splits


if __name__ == "__main__":
    main()
