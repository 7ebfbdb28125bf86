"""Where the shipped stage-0 base lives, and a clear error when it is missing."""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
"""The shipped tiny base after stage 0 (`examples/recipes/tiny/stage0.yaml`); model name `tiny-pretrained`."""


def pretrained_base_path() -> str:
    """The folder of the shipped pretrained tiny base (a Qwen2.5-VL checkpoint that reads VSP maps).

    Raises:
        FileNotFoundError: the folder has no weights; `make base` rebuilds them from the stage-0 recipe.
    """
    missing = [name for name in ("config.json", "model.safetensors") if not (PRETRAINED_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"the pretrained tiny base {PRETRAINED_DIR} lacks {', '.join(missing)}; rebuild it with `make base` "
            "(python examples/pretrain_tiny_base.py --config examples/recipes/tiny/stage0.yaml)"
        )
    return str(PRETRAINED_DIR)
