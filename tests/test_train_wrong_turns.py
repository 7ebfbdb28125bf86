"""Wrong turns a new user takes with the training entry points, each met early with a message that says what is wrong
and what to do; and the warnings a plain run used to print, gone at their cause."""

from __future__ import annotations

import json
import os
import runpy
import time
import warnings
from pathlib import Path

import pytest
from train_helpers import fast_args, load

import mirage_tasks
from trainers import MirageSFTConfig, MirageSFTTrainer, load_model_and_processor

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "sft_mirage.py"
RECIPES = REPO / "examples" / "recipes"

pytestmark = pytest.mark.usefixtures("one_thread")


def script_namespace() -> dict:
    return runpy.run_path(str(SCRIPT), run_name="sft_mirage")


def parse(namespace: dict, args: list[str]):
    """The script's three argument dataclasses, parsed from a command line as the script does."""
    from trl import ModelConfig, TrlParser

    parser = TrlParser((namespace["MirageScriptArguments"], MirageSFTConfig, ModelConfig))
    return parser.parse_args_and_config(args=args, fail_with_unknown_args=True)


@pytest.fixture(scope="module")
def dataset():
    return mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 8, levels=3, seed=0)


def test_default_config_and_a_short_cpu_run_print_no_checkpointing_or_pin_memory_warning(
    tiny_mirage_dir, dataset, tmp_path
):
    """TRL's default `gradient_checkpointing` made transformers warn that the name is deprecated on every config, and
    the data loader warned that pinned memory needs an accelerator on every CPU run without `--use_cpu`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = MirageSFTConfig(str(tmp_path / "default"), report_to="none")
        model, processor = load(tiny_mirage_dir)
        args = fast_args(tmp_path / "run", use_cpu=False, max_steps=2, activation_checkpointing=True)
        trainer = MirageSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
        trainer.train()
    messages = [str(w.message) for w in caught]
    assert trainer.state.global_step == 2
    assert default.activation_checkpointing is True and default.gradient_checkpointing is True  # TRL's default kept
    assert args.dataloader_pin_memory is False
    assert not [m for m in messages if "checkpointing" in m and "deprecated" in m], messages
    assert not [m for m in messages if "pin_memory" in m], messages


def test_the_old_checkpointing_names_still_work(tmp_path):
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        args = MirageSFTConfig(
            str(tmp_path), gradient_checkpointing=False, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    assert args.activation_checkpointing is False
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}


# ---- model_name_or_path --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./no/such/dir", "no/such/dir", "outputs/tiny-stage1", "{tmp}/gone", "~/no-such-x"])
def test_a_missing_model_folder_is_named_at_once_without_the_hub(name, tmp_path, monkeypatch):
    """Path-looking names that are no folder: no Hub lookup (no 'Repo id must be in the form' error, no wait for the
    network), but the folder named and what is accepted. `outputs/tiny-stage1` is the tiny stage-2 recipe's model
    when stage 1 has not run: it counts as a path because `outputs/` exists."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    name = name.format(tmp=tmp_path)
    started = time.monotonic()
    with pytest.raises(FileNotFoundError) as error:
        load_model_and_processor(name)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert f"model folder {os.path.expanduser(name)} does not exist" in message, message
    assert "a Hub id" in message and "'tiny'" in message


def test_a_hub_id_that_cannot_be_read_says_it_is_no_local_folder(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import, so patched here
    with pytest.raises(OSError, match=r"'someone/no-such-model' is no local folder, and as a Hub id it could not"):
        load_model_and_processor("someone/no-such-model")


def test_a_folder_without_config_json_says_what_it_holds(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"empty has no config.json, so it is not a saved model \(found: "):
        load_model_and_processor(str(empty))

    run = tmp_path / "run"
    for step in (2, 10):
        (run / f"checkpoint-{step}").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as error:
        load_model_and_processor(str(run))
    assert "checkpoints ['checkpoint-2', 'checkpoint-10']: pass one of them, e.g." in str(error.value)
    assert str(error.value).endswith(str(run / "checkpoint-10"))

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/tmp/gone"}))
    with pytest.raises(ValueError, match=r"holds a LoRA adapter \(adapter_config.json, base '/tmp/gone'\)"):
        load_model_and_processor(str(adapter))


def test_a_folder_of_another_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError) as error:
        load_model_and_processor(str(tmp_path))
    message = str(error.value)
    assert f"{tmp_path} is a 'llama' checkpoint" in message and "['LlamaForCausalLM']" in message
    assert "model_type 'qwen2_5_vl'" in message and "model_type 'mirage'" in message


def test_the_trainer_and_the_script_report_a_missing_folder(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder ./no/such/dir does not exist"):
        MirageSFTTrainer(model="./no/such/dir", args=fast_args(tmp_path), train_dataset=dataset)
    namespace = script_namespace()
    args = ["--config", str(RECIPES / "tiny" / "stage2.yaml"), "--model_name_or_path", "./no/such/dir"]
    with pytest.raises(FileNotFoundError, match="model folder ./no/such/dir does not exist"):
        namespace["main"](*parse(namespace, args + ["--output_dir", str(tmp_path)]))


# ---- examples/sft_mirage.py: evaluation split, resuming ------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch):
    """The trainers the script builds, kept for inspection (the script imports the class when it runs)."""
    import trainers.sft_trainer

    built = []

    class Recording(trainers.sft_trainer.MirageSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

        def train(self, resume_from_checkpoint=None, **kwargs):
            self.resumed_from, self.steps_run = resume_from_checkpoint, 0
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

        def training_step(self, *args, **kwargs):
            self.steps_run += 1
            return super().training_step(*args, **kwargs)

    monkeypatch.setattr(trainers.sft_trainer, "MirageSFTTrainer", Recording)
    return built


def tiny_run(output_dir, *extra: str) -> list[str]:
    """A one-process, few-second stage-1 run of the tiny recipe."""
    return [
        "--config", str(RECIPES / "tiny" / "stage1.yaml"), "--use_cpu", "true", "--max_steps", "1",
        "--num_train_examples", "8", "--levels", "3", "--per_device_train_batch_size", "2", "--logging_steps", "1",
        "--disable_tqdm", "true", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def test_evaluation_uses_the_datasets_test_split(tmp_path, recorded):
    splits = mirage_tasks.build_splits("vsp_planning", "mirage-direct", 6, 3, levels=3, seed=1)
    folder = tmp_path / "data"
    for name, rows in splits.items():
        rows.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    namespace = script_namespace()
    args = ["--dataset_name", str(folder), "--eval_strategy", "steps", "--eval_steps", "1"]
    namespace["main"](*parse(namespace, tiny_run(tmp_path / "run", *args)))
    (trainer,) = recorded
    assert trainer.eval_dataset["id"] == splits["test"]["id"] and trainer.train_dataset["id"] == splits["train"]["id"]
    assert any("eval_loss" in entry for entry in trainer.state.log_history)

    with pytest.raises(ValueError, match=r"has no 'validation' split for test \(it has \['test', 'train'\]\)"):
        namespace["main"](*parse(namespace, tiny_run(tmp_path / "r2", *args, "--dataset_test_split", "validation")))


def test_evaluation_on_generated_rows_uses_a_disjoint_generated_test_split():
    namespace = script_namespace()
    script_args, _, _ = parse(namespace, ["--num_train_examples", "6", "--num_eval_examples", "3", "--levels", "3"])
    train, test = namespace["load_datasets"](script_args, evaluate=True)
    assert len(train) == 6 and len(test) == 3
    assert not {tuple(map(tuple, m)) for m in train["map_desc"]} & {tuple(map(tuple, m)) for m in test["map_desc"]}
    train_only, none = namespace["load_datasets"](script_args, evaluate=False)
    assert none is None and len(train_only) == 6


def test_resume_true_names_the_last_checkpoint_or_says_there_is_none(tmp_path):
    resume = script_namespace()["resume_checkpoint"]
    assert resume(None, str(tmp_path)) is None and resume("false", str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match=rf"no checkpoint-N folder in output_dir {tmp_path} \(found: \[\]\)"):
        resume("true", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="found: the folder does not exist"):
        resume("True", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"--resume_from_checkpoint gone: no such folder"):
        resume("gone", str(tmp_path))
    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert resume("true", str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert resume(str(tmp_path / "checkpoint-2"), str(tmp_path)) == str(tmp_path / "checkpoint-2")


def test_script_resume_true_continues_from_the_last_checkpoint(tmp_path, recorded):
    namespace = script_namespace()
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="--resume_from_checkpoint true: no checkpoint-N folder"):
        namespace["main"](*parse(namespace, tiny_run(run, "--resume_from_checkpoint", "true")))
    assert not recorded  # refused before any model was loaded
    namespace["main"](
        *parse(namespace, tiny_run(run, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1"))
    )
    namespace["main"](*parse(namespace, tiny_run(run, "--max_steps", "3", "--resume_from_checkpoint", "true")))
    first, resumed = recorded
    assert resumed.resumed_from == str(run / "checkpoint-2")
    assert first.steps_run == 2 and resumed.steps_run == 1 and resumed.state.global_step == 3


def test_a_missing_official_path_stops_before_any_data_is_generated(tmp_path):
    namespace = script_namespace()
    script_args, _, _ = parse(
        namespace,
        ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path / "out"),
         "--official_data_root", str(tmp_path / "no-official")],
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no-official"):
        namespace["load_datasets"](script_args, evaluate=False)
