"""Model cards for saved Mirage folders: rendering, metadata that parses back, and the usage snippet run as written
against the saved folder and against the files a push would upload, offline, in a fresh process."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from fake_hub import FakeHub
from huggingface_hub import ModelCard
from transformers import GenerationConfig

from hub_cards import model_page_files, push_model_folder, render_model_card, write_model_card
from mirage_tasks.evaluation import load_rows


def test_rendered_card_has_metadata_usage_and_recipe():
    card = render_model_card(
        repo_id="someone/mirage-tiny",
        base_model="Qwen/Qwen2.5-VL-7B-Instruct",
        latent_num_tokens=4,
        training_stages=[{"stage": "stage 1", "steps": 200}, {"stage": "stage 2", "steps": 100}],
        datasets=["someone/vsp-planning", "data/generated/vsp"],
        notes="A test model.",
    )
    text = str(card)
    assert card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert card.data.datasets == ["someone/vsp-planning"]  # only Hub ids go to the metadata; both are in the body
    assert "`someone/vsp-planning`, `data/generated/vsp`" in text
    assert "custom_code" in card.data.tags and card.data.pipeline_tag == "image-text-to-text"
    assert card.data.library_name == "transformers" and "arxiv:2506.17218" in card.data.tags
    assert 'model_id = "someone/mirage-tiny"' in text and "trust_remote_code=True" in text
    assert "| stage 1 | 200 |" in text and "| stage 2 | 100 |" in text
    assert "stage 1, then stage 2" in text and "- A test model." in text and "Not evaluated." in text
    assert "for\n4 steps" in text or "for 4 steps" in text


def test_write_model_card_reads_the_saved_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mirage", "latent_num_tokens": 6}))
    path = write_model_card(tmp_path, base_model="tiny-base")
    text = path.read_text()
    assert path.name == "README.md" and "**Latent tokens per block (k):** 6" in text
    assert "Not evaluated." in text and "not trained (converted checkpoint)" in text


def test_a_rewritten_card_keeps_base_model_datasets_and_recipe(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mirage", "latent_num_tokens": 4}))
    write_model_card(
        tmp_path, base_model="Qwen/Qwen2.5-VL-3B-Instruct", datasets=["a/b"], training_stages=[{"stage": "stage 1"}]
    )
    write_model_card(tmp_path, notes="rewritten")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-VL-3B-Instruct" and card.data.datasets == ["a/b"]
    assert card.data.mirage["training_stages"] == [{"stage": "stage 1"}] and "- rewritten" in card.text


def test_write_model_card_refuses_a_folder_that_is_not_mirage(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_model_card(tmp_path, base_model="x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ValueError, match="not 'mirage'"):
        write_model_card(tmp_path, base_model="x")


# ---- the usage snippet --------------------------------------------------------------------------------------------
def snippet(card_text: str) -> str:
    """The card's usage snippet: the Python block under "## Use"."""
    use = card_text.split("## Use", 1)[1]
    return re.search(r"```python\n(.*?)```", use, flags=re.DOTALL).group(1)


@pytest.fixture(scope="module")
def page(tiny_mirage_dir, tmp_path_factory):
    """A saved tiny Mirage folder with its card and example (an official test map). A random tiny model rarely opens
    a latent block by itself, so its saved generation config biases `<|latent_start|>` and, right after a block's
    `<|latent_end|>`, the end of turn: greedy decoding then writes one block and stops. The snippet itself is run
    unchanged."""
    folder = tmp_path_factory.mktemp("page") / "mirage-tiny-card"
    shutil.copytree(tiny_mirage_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    pad, start, end = config["latent_pad_token_id"], config["latent_start_token_id"], config["latent_end_token_id"]
    generation = GenerationConfig.from_pretrained(folder)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, int) else generation.eos_token_id[0]
    generation.sequence_bias = [[[start], 50.0], [[end, eos], 100.0]]
    generation.save_pretrained(folder)
    row = load_rows("official", limit=1)[0]
    write_model_card(folder, repo_id="someone/mirage-tiny-card", base_model="tiny", example_row=row)
    return {"folder": folder, "ids": (pad, start, end), "k": config["latent_num_tokens"]}


def run_snippet(code: str, env_overrides: dict) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env_overrides)
    with tempfile.TemporaryDirectory() as outside:  # the repository is not importable there
        completed = subprocess.run(
            [sys.executable, "-c", code], cwd=outside, env=env, capture_output=True, text=True, timeout=600
        )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def check_output(stdout: str, k: int) -> None:
    completion, shape = stdout.strip().splitlines()[-2:]
    assert completion.startswith("<|latent_start|>" + "<|latent_pad|>" * k + "<|latent_end|>"), completion
    assert re.fullmatch(rf"torch\.Size\(\[{k}, \d+\]\)", shape), shape


def test_the_snippet_runs_against_the_saved_folder(page, tmp_path):
    code = snippet((page["folder"] / "README.md").read_text())
    assert code.count('"someone/mirage-tiny-card"') == 1
    local = code.replace('"someone/mirage-tiny-card"', repr(str(page["folder"])))
    check_output(run_snippet(local, {"HF_MODULES_CACHE": str(tmp_path / "modules")}), page["k"])


def test_the_snippet_runs_as_written_against_what_a_push_uploads(page, monkeypatch, tmp_path):
    """The pushed files, laid out as the Hub cache holds a downloaded repository; the snippet unchanged."""
    hub = FakeHub(monkeypatch)
    push_model_folder(page["folder"], "someone/mirage-tiny-card")
    (commit,) = hub.commits
    assert sorted(commit["files"]) == model_page_files(page["folder"])
    repo = tmp_path / "hub" / "models--someone--mirage-tiny-card"
    revision = "0" * 39 + "1"
    for name, data in commit["files"].items():
        path = repo / "snapshots" / revision / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    code = snippet(commit["files"]["README.md"].decode())
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_MODULES_CACHE": str(tmp_path / "modules")}
    check_output(run_snippet(code, env), page["k"])
