"""The README's usage snippet runs as written (on the embedded tiny Mirage model) and its replay is exact."""

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def usage_snippet() -> str:
    """The first Python block of the README's "Using a model" section."""
    section = README.read_text().split("## Using a model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_readme_usage_snippet_runs_and_replays_exactly(tiny_mirage_dir, tmp_path, monkeypatch):
    code = usage_snippet()
    assert '"path/or/repo"' in code and 'Image.open("map.png")' in code
    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "map.png")
    # a shorter generation than the README's 256 tokens keeps the test quick, and a prompt that opens a latent block
    # makes sure the replay has latents to feed (a random model seldom opens one by itself); nothing else changes
    code = code.replace('"path/or/repo"', repr(tiny_mirage_dir)).replace("max_new_tokens=256", "max_new_tokens=48")
    opened = code.replace(
        "\nprocessor.tokenizer.padding_side", '\nprompt += "<|latent_start|>"\nprocessor.tokenizer.padding_side'
    )
    assert opened != code
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(opened, str(README), "exec"), scope)
    out, replay = scope["out"], scope["replay"]
    assert scope["gap"].item() <= 1e-5
    assert replay.logits.shape[1] == out.sequences.shape[1]
    assert out.latents[0].shape[0] >= scope["model"].config.latent_num_tokens
    assert [len(latent) for latent in out.latents] == [
        int((row == scope["model"].config.latent_pad_token_id).sum()) for row in out.sequences
    ]
