"""Stage 0: pretrain the embedded tiny Qwen2.5-VL base to read VSP maps (perception only, no planning).

    python examples/pretrain_tiny_base.py --config examples/recipes/tiny/stage0.yaml   # = make base

Builds the random tiny base (`mirage_tiny.build_tiny_base`), trains it on helper image -> moves and map -> start and
goal cells with a per-token cell probe (kind, arrow, row, column) on the vision tower and a curriculum over map sizes
(see `mirage_tiny.pretrain`), and writes the result, a plain Qwen2.5-VL checkpoint (safetensors, tokenizer, processor)
plus `stage0_log.json` (accuracy and target diversity as it trained) and `report.json`
(`mirage_tiny.pretrain.base_report`: grid, path and locate reading per level, target diversity, its own score on the
official planning test), to `output_dir`: `mirage_tiny/pretrained`, which the model name `tiny-pretrained` resolves
to. One CPU thread, seeded: the same recipe rebuilds the same weights on the same machine.
Every field of the recipe can be overridden on the command line (`--curriculum 3:100 --output_dir /tmp/base`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from trl import TrlParser

from mirage_tiny.pretrain import Stage0Config, base_report, pretrain_tiny_base


def main() -> None:
    (config,) = TrlParser((Stage0Config,)).parse_args_and_config()
    start = time.perf_counter()
    result = pretrain_tiny_base(config, log=lambda line: print(line, flush=True))
    last = result["history"][-1]
    print(json.dumps({"final": last}))
    report = base_report(config.output_dir)
    report["cpu_seconds_to_train"] = result["cpu_seconds"]
    (Path(config.output_dir) / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({"report": report}))
    print(
        f"wrote {config.output_dir} ({result['parameters'] / 1e6:.2f} M parameters) in {time.perf_counter() - start:.0f} s "
        f"wall, {result['cpu_seconds']:.0f} s CPU; target cosine {last['target_cosine']:.3f}"
    )


if __name__ == "__main__":
    main()
