"""Build the embedded tiny base: a random-weight Qwen2.5-VL-architecture checkpoint, offline, in seconds.

The folder it writes is an ordinary Hugging Face checkpoint (safetensors weights, a byte-level BPE tokenizer trained
on the bundled tasks' texts with the Qwen special tokens and chat template, the stock Qwen2.5-VL processor), so every
script that takes `Qwen/Qwen2.5-VL-7B-Instruct` takes this folder instead. The same seed gives the same files.

Usage:

    python examples/make_tiny_base.py --output-dir outputs/tiny-base
    python examples/make_tiny_base.py --output-dir outputs/tiny-base --seed 1 --overwrite
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from transformers import HfArgumentParser
from transformers.utils import logging

from mirage_tiny import build_tiny_base


@dataclass
class MakeTinyBaseArguments:
    """Command-line arguments of `make_tiny_base.py`."""

    output_dir: str = field(metadata={"help": "Folder to write the checkpoint to; must be missing or empty."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weight initialisation."})
    overwrite: bool = field(default=False, metadata={"help": "Replace the contents of a non-empty --output-dir."})
    hidden_size: int | None = field(
        default=None, metadata={"help": "Language-model width; unset keeps the builder's default (128)."}
    )
    num_layers: int | None = field(
        default=None, metadata={"help": "Language-model decoder layers; unset keeps the builder's default (4)."}
    )


def main(argv: list[str] | None = None) -> str:
    """Parse `argv`, build the base, print a one-line summary and return the folder."""
    parser = HfArgumentParser(MakeTinyBaseArguments)
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    # Only forward the sizes given, so the builder's defaults stay the single source of truth.
    sizes = {name: getattr(args, name) for name in ("hidden_size", "num_layers") if getattr(args, name) is not None}
    logging.disable_progress_bar()  # a one-shard write of a few MB needs no progress bar
    start = time.perf_counter()
    try:
        path = build_tiny_base(args.output_dir, seed=args.seed, overwrite=args.overwrite, **sizes)
    except FileExistsError:
        parser.error(f"--output-dir {args.output_dir} is not empty; pass --overwrite to replace its contents")
    print(f"Tiny Qwen2.5-VL base (seed {args.seed}) written to {path} in {time.perf_counter() - start:.1f} s")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
