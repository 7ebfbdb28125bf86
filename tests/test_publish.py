"""Publishing a trained Mirage model: exactly what the intercepted Hub commit would carry, from the trainer's own push
(checkpoint pushes during training included) and from `push_model_folder`; errors before any upload."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from fake_hub import TOKEN, FakeHub, assert_no_token
from huggingface_hub import ModelCard
from train_helpers import fast_args, load

import mirage_tasks
from hub_cards import (
    IncompleteModelFolderError,
    ResultsMismatchError,
    model_page_files,
    push_model_folder,
    write_model_card,
)
from mirage_tasks.evaluation import EvaluationConfig, evaluate, load_rows, write_outputs
from trainers import MirageSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "someone/mirage-tiny-test"
DATASET_ID = "someone/vsp-planning-mirage-direct"
PAGE = {
    "README.md", "config.json", "generation_config.json", "model.safetensors", "configuration_mirage.py",
    "modeling_mirage.py", "generation_mirage.py", "processing_mirage.py", "processor_config.json", "tokenizer.json",
    "tokenizer_config.json", "chat_template.jinja", "examples/0.png", "examples/0.json",
}  # fmt: skip
NOT_ON_A_PAGE = ("checkpoint-", "optimizer", "scheduler", "rng_state", "trainer_state", "training_args", "runs/")


@pytest.fixture(scope="module")
def trained(tiny_mirage_dir, tmp_path_factory):
    """A tiny model trained 2 steps with `push_to_hub` and `hub_strategy="checkpoint"` (one checkpoint push), evaluated
    into `<output_dir>/eval`, then pushed with `trainer.push_to_hub`: the fake Hub's record, the captured logs and
    the trainer."""
    monkeypatch = pytest.MonkeyPatch()
    hub = FakeHub(monkeypatch)
    output = tmp_path_factory.mktemp("pushed")
    model, processor = load(tiny_mirage_dir)
    rows = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 8, levels=3, seed=0)
    args = fast_args(
        output, latent_stage=1, max_steps=2, save_strategy="steps", save_steps=2, push_to_hub=True,
        hub_model_id=REPO_ID, hub_token=TOKEN, hub_strategy="checkpoint", hub_private_repo=True, logging_steps=1,
    )  # fmt: skip
    logger = logging.getLogger()
    records: list[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            trainer = MirageSFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor)
            trainer.train()
            during_training = len(hub.commits)
            eval_rows = load_rows("official", limit=4)
            evaluation = evaluate(
                model, processor, eval_rows, EvaluationConfig(max_new_tokens=8, interventions=("zero", "shuffle")),
                data_name="official",
            )  # fmt: skip
            write_outputs(evaluation, output / "eval")
            trainer.push_to_hub(dataset_name=DATASET_ID)
    finally:
        logger.removeHandler(handler)
        monkeypatch.undo()
    logs = "\n".join(records) + printed.getvalue()
    return {"hub": hub, "output": output, "trainer": trainer, "during": during_training, "logs": logs}


def test_checkpoint_pushes_send_the_page_and_the_asked_for_checkpoint(trained):
    hub = trained["hub"]
    assert hub.repos == [{"repo_id": REPO_ID, "private": True, "repo_type": "model"}]
    during = hub.commits[: trained["during"]]
    # hub_strategy="checkpoint": at the one save, the page at the top level and the checkpoint under last-checkpoint/
    assert [c["message"] for c in during] == [
        "Training in progress, step 2",
        "Training in progress, step 2, checkpoint",
    ]
    assert set(during[0]["files"]) == PAGE
    card = during[0]["files"]["README.md"].decode()
    assert "fine-tuned version of" not in card and "| stage 1 | " in card and "Not evaluated." in card
    checkpoint = set(during[1]["files"])
    assert all(name.startswith("last-checkpoint/") for name in checkpoint)
    assert {"last-checkpoint/optimizer.pt", "last-checkpoint/model.safetensors"} <= checkpoint  # asked for


def test_the_final_push_is_one_commit_of_the_page_with_the_evaluated_results(trained):
    hub, output = trained["hub"], trained["output"]
    final = hub.commits[-1]
    assert len(hub.commits) == trained["during"] + 1 and final["message"] == "End of training"
    figures = {f"eval/{p.name}" for p in (output / "eval").glob("*.png")}
    assert "eval/success_by_level.png" in figures
    assert set(final["files"]) == PAGE | {"eval/results.json"} | figures
    for name, data in final["files"].items():
        assert not name.endswith((".bin", ".pt", ".pth", ".pkl")) and not name.startswith(NOT_ON_A_PAGE)
        assert data == (output / name).read_bytes(), name
    # the output folder holds more than the page: none of it went up
    left = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()} - set(final["files"])
    assert "training_args.bin" in left and any(name.startswith("checkpoint-2/") for name in left)
    assert "eval/predictions.jsonl" in left


def test_the_pushed_card_carries_metadata_and_a_model_index_equal_to_results_json(trained, tmp_path):
    files = trained["hub"].commits[-1]["files"]
    (tmp_path / "README.md").write_bytes(files["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-text-to-text"
    assert data.license == "apache-2.0" and data.datasets == [DATASET_ID]
    assert data.base_model is None  # the tiny base is no Hub model; its path is named in the body
    assert {"mirage", "custom_code", "arxiv:2506.17218", "trl", "sft"} <= set(data.tags)
    assert data.mirage["training_stages"][0]["stage"] == "stage 1" and data.mirage["latent_num_tokens"] == 4

    results = json.loads(files["eval/results.json"])
    got = {(r.metric_name, r.dataset_config): r.metric_value for r in data.eval_results}
    expected = {}
    for run, title in (("plain", "success rate"), ("zero", "success rate, latents zeroed"),
                       ("shuffle", "success rate, latents of another problem")):  # fmt: skip
        summary = results["runs"][run]
        expected[(f"{title} (n={summary['n']})", None)] = round(summary["success_rate"], 4)
    for level, group in results["runs"]["plain"]["per_level"].items():
        expected[(f"success rate, level {level} (n={group['n']})", f"level-{level}")] = round(group["success_rate"], 4)
    assert got == expected
    assert {r.dataset_name for r in data.eval_results} == {"VSP spatial planning, official test"}
    assert {r.task_type for r in data.eval_results} == {"image-text-to-text"}
    text = card.text
    assert "![eval/success_by_level.png](eval/success_by_level.png)" in text
    assert 'model_id = "someone/mirage-tiny-test"' in text and "trust_remote_code=True" in text
    assert "out.latents" in text and "## Training recipe" in text and "## Limitations" in text


def test_no_token_in_files_or_logs(trained):
    assert all(commit["token"] == TOKEN for commit in trained["hub"].commits)  # it was used ...
    assert "'loss'" in trained["logs"]  # (the training's output was captured)
    assert_no_token(trained["hub"], trained["logs"])  # ... and never written or shown
    # Trainer would push the checkpoint's training_args.bin, a pickle that holds hub_token
    assert "last-checkpoint/training_args.bin" not in trained["hub"].commits[1]["files"]
    assert TOKEN.encode() in (trained["output"] / "checkpoint-2" / "training_args.bin").read_bytes()


def test_push_model_folder_sends_the_same_file_set_as_the_trainer(trained, monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_model_folder(trained["output"], REPO_ID, private=True)
    assert len(hub.commits) == 1
    assert hub.commits[0]["files"] == trained["hub"].commits[-1]["files"]
    assert hub.commits[0]["token"] is None  # taken from the environment by huggingface_hub, not passed around
    assert model_page_files(trained["output"]) == sorted(hub.commits[0]["files"])


def copy_page(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in model_page_files(source):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)
    return target


@pytest.mark.parametrize(
    "remove, named",
    [
        ("model.safetensors", "model.safetensors (weights; found none)"),
        ("modeling_mirage.py", "modeling_mirage.py"),
        ("generation_mirage.py", "generation_mirage.py"),  # imported by modeling_mirage.py
        ("processor_config.json", "processor_config.json"),
        ("README.md", "README.md"),
        ("examples/0.png", "examples/0.png"),
    ],
)
def test_an_incomplete_folder_is_refused_before_any_upload(trained, monkeypatch, tmp_path, remove, named):
    hub = FakeHub(monkeypatch)
    folder = copy_page(trained["output"], tmp_path)
    (folder / remove).unlink()
    with pytest.raises(IncompleteModelFolderError, match="missing: .*" + re.escape(named)):
        push_model_folder(folder, REPO_ID, token=TOKEN)
    assert hub.repos == [] and hub.commits == []


def test_an_adapter_folder_and_a_folder_of_another_model_are_refused(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    with pytest.raises(IncompleteModelFolderError, match="no config.json"):
        push_model_folder(tmp_path, REPO_ID)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ValueError, match="not 'mirage'"):
        push_model_folder(tmp_path, REPO_ID)
    assert hub.commits == [] and hub.repos == []


def test_results_of_another_model_are_refused(trained, tmp_path):
    folder = copy_page(trained["output"], tmp_path / "page")
    results = json.loads((folder / "eval" / "results.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    results["model"].update(name_or_path="someone/other-model", config_hash="0123456789abcdef")
    (other / "results.json").write_text(json.dumps(results))
    before = (folder / "README.md").read_text()
    with pytest.raises(ResultsMismatchError, match=r"'someone/other-model' with config hash '0123456789abcdef'"):
        write_model_card(folder, results=other)
    assert (folder / "README.md").read_text() == before
    results["model"]["model_type"] = "qwen2_5_vl"
    (other / "results.json").write_text(json.dumps(results))
    with pytest.raises(ResultsMismatchError, match="not on a Mirage model"):
        write_model_card(folder, results=other / "results.json")


def test_update_model_card_rewrites_the_card_from_new_results_and_pushes_it(trained, monkeypatch, tmp_path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("update_model_card", REPO / "examples" / "update_model_card.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["update_model_card"] = module
    spec.loader.exec_module(module)
    hub = FakeHub(monkeypatch)
    folder = copy_page(trained["output"], tmp_path / "page")
    new = tmp_path / "new-eval"
    shutil.copytree(trained["output"] / "eval", new)
    results = json.loads((new / "results.json").read_text())
    results["runs"]["plain"]["success_rate"] = 0.75  # a later evaluation of the same model
    (new / "results.json").write_text(json.dumps(results))
    (new / "latent_similarity.png").unlink(missing_ok=True)  # not drawn this time: the old one must go
    try:
        module.main(["--model-dir", str(folder), "--results", str(new), "--push-to-hub", REPO_ID])
    finally:
        sys.modules.pop("update_model_card", None)
    (commit,) = hub.commits
    assert commit["message"] == "Update model card and evaluation results"
    assert json.loads(commit["files"]["eval/results.json"])["runs"]["plain"]["success_rate"] == 0.75
    assert "eval/latent_similarity.png" not in commit["files"] and "eval/success_by_level.png" in commit["files"]
    (tmp_path / "README.md").write_bytes(commit["files"]["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    plain = [r for r in card.data.eval_results if r.metric_name.startswith("success rate (n=")]
    assert [r.metric_value for r in plain] == [0.75]
    assert card.data.datasets == [DATASET_ID] and 'model_id = "someone/mirage-tiny-test"' in card.text  # kept

    other = json.loads((new / "results.json").read_text())
    other["model"]["config_hash"] = "ffffffffffffffff"
    (new / "results.json").write_text(json.dumps(other))
    with pytest.raises(ResultsMismatchError, match="belongs to another model"):
        module.main(["--model-dir", str(folder), "--results", str(new), "--push-to-hub", REPO_ID])
    assert len(hub.commits) == 1


def _run_training_script(name: str, config_class: str, argv: list[str]) -> str:
    """Run `examples/<name>.py`'s `main` in-process with `argv` (its own three-dataclass parser); return what it
    printed."""
    import runpy

    from trl import ModelConfig, TrlParser

    script = runpy.run_path(str(REPO / "examples" / f"{name}.py"), run_name=name)
    parser = TrlParser((script["MirageScriptArguments"], script[config_class], ModelConfig))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        script["main"](*parser.parse_args_and_config(argv))
    return printed.getvalue()


def test_sft_script_push_to_hub_uploads_the_page_with_the_mirage_card(tiny_mirage_dir, monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch)
    output = tmp_path / "run"
    argv = [
        "--model_name_or_path", tiny_mirage_dir, "--latent_stage", "1", "--num_train_examples", "4", "--levels", "3",
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--output_dir", str(output), "--push_to_hub", "true", "--hub_model_id", REPO_ID,
        "--hub_token", TOKEN, "--activation_checkpointing", "false", "--disable_tqdm", "true",
    ]  # fmt: skip
    printed = _run_training_script("sft_mirage", "MirageSFTConfig", argv)
    (commit,) = hub.commits
    assert commit["message"] == "Model save" and set(commit["files"]) == PAGE
    card = commit["files"]["README.md"].decode()
    assert "fine-tuned version of" not in card and "trust_remote_code=True" in card and "| stage 1 | " in card
    assert "training_args.bin" in {p.name for p in output.iterdir()}  # saved locally, never sent
    assert_no_token(hub, printed)


def test_grpo_script_with_lora_pushes_the_merged_model_with_the_mirage_card(tiny_mirage_dir, monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch)
    argv = [
        "--model_name_or_path", tiny_mirage_dir, "--use_peft", "true", "--lora_r", "2", "--lora_alpha", "4",
        "--num_train_examples", "4", "--levels", "3", "--max_steps", "1", "--num_generations", "2",
        "--per_device_train_batch_size", "2", "--max_completion_length", "8", "--use_cpu", "true", "--report_to", "none",
        "--save_strategy", "no", "--output_dir", str(tmp_path / "run"), "--push_to_hub", "true", "--hub_model_id",
        REPO_ID, "--hub_token", TOKEN, "--hub_strategy", "end", "--activation_checkpointing", "false",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    printed = _run_training_script("grpo_mirage", "MirageGRPOConfig", argv)
    (commit,) = hub.commits  # the merged model once, at the end: no adapter push
    assert commit["message"] == "End of training" and set(commit["files"]) == PAGE
    assert "adapter_config.json" not in commit["files"] and "model.safetensors" in commit["files"]
    card = commit["files"]["README.md"].decode()
    assert "fine-tuned version of" not in card and "trust_remote_code=True" in card
    assert_no_token(hub, printed)


def test_the_parent_hooks_the_mixin_extends_exist():
    """TRL's card hook and Trainer's push methods (and the shared HfApi they upload through) at the pinned versions."""
    import inspect

    import transformers.trainer as trainer_module
    from transformers import Trainer
    from trl import SFTTrainer
    from trl.trainer.base_trainer import _BaseTrainer

    from trainers.hub import MirageHubMixin

    assert callable(trainer_module.hf_api)
    for name in ("push_to_hub", "_push_from_checkpoint", "train"):
        assert hasattr(Trainer, name) and name in vars(MirageHubMixin)
    assert list(inspect.signature(_BaseTrainer.create_model_card).parameters) == [
        "self", "model_name", "dataset_name", "tags"
    ]  # fmt: skip
    assert MirageSFTTrainer.__mro__.index(MirageHubMixin) < MirageSFTTrainer.__mro__.index(SFTTrainer)
    assert "upload_folder" in inspect.getsource(Trainer.push_to_hub)
    assert inspect.getsource(Trainer._push_from_checkpoint).count("hf_api().upload_folder") == 2


def test_pushing_lora_checkpoints_during_training_is_refused_before_training(tiny_mirage_dir, monkeypatch, tmp_path):
    from trainers import language_model_lora_config

    hub = FakeHub(monkeypatch)
    model, processor = load(tiny_mirage_dir)
    rows = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 2, levels=3, seed=0)
    args = fast_args(tmp_path, latent_stage=1, max_steps=1, push_to_hub=True, hub_model_id=REPO_ID)
    trainer = MirageSFTTrainer(
        model=model, args=args, train_dataset=rows, processing_class=processor,
        peft_config=language_model_lora_config(r=2, lora_alpha=4),
    )  # fmt: skip
    with pytest.raises(ValueError, match="hub_strategy='every_save'.*set hub_strategy='end'"):
        trainer.train()
    assert trainer.state.global_step == 0 and hub.commits == []
