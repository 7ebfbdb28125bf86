"""LoRA trains only language-model adapters and merges into a remote-code folder; a resumed run ends where an
uninterrupted one does; the trainer's overrides still match TRL's hooks."""

from __future__ import annotations

import inspect

import pytest
import torch
from train_helpers import fast_args, load
from transformers import AutoModel, Trainer
from trl import SFTTrainer
from trl.trainer.utils import add_fused_lm_head

import mirage_tasks
from trainers import MirageSFTTrainer, language_model_lora_config, save_for_hub

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    return mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 16, levels=3, seed=0)


def test_lora_trains_only_language_model_adapters_and_merges(tiny_mirage_dir, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load(tiny_mirage_dir)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = MirageSFTTrainer(
        model=model,
        args=fast_args(tmp_path, latent_stage=1, max_steps=5),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=language_model_lora_config(r=4, lora_alpha=8, lora_dropout=0.0),
    )
    trainer.train()
    named = dict(trainer.model.named_parameters())
    trainable = [name for name, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in name and "language_model" in name for name in trainable)
    assert not any("visual" in name for name in named if "lora_" in name)
    # Base weights untouched, every adapter B matrix (zero at start) moved.
    for name, p in named.items():
        if "lora_" in name:
            continue
        original = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(p, base[original]), name
    assert all(named[name].abs().sum() > 0 for name in trainable if "lora_B" in name)

    folder = save_for_hub(trainer.model, processor, tmp_path / "merged")
    merged = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else trainer.model
    loaded = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    assert loaded.config.model_type == "mirage" and not any("lora" in name for name, _ in loaded.named_parameters())
    batch = trainer.data_collator([dataset[i] for i in range(2)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    fresh = load(tiny_mirage_dir)[0].eval()
    with torch.no_grad():
        logits = loaded(**inputs).logits
        torch.testing.assert_close(logits, merged.eval()(**inputs).logits, rtol=0, atol=1e-5)
        assert not torch.allclose(logits, fresh(**inputs).logits, atol=1e-4)  # the adapters did something


def test_lora_stage2_with_gradient_checkpointing(tiny_mirage_dir, dataset, tmp_path):
    """PEFT + checkpointing + the self-filling chain: the adapters still receive gradient and move."""
    model, processor = load(tiny_mirage_dir)
    trainer = MirageSFTTrainer(
        model=model,
        args=fast_args(tmp_path, latent_stage=2, max_steps=2, activation_checkpointing=True),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=language_model_lora_config(r=4, lora_alpha=8, lora_dropout=0.0),
    )
    trainer.train()
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_resumed_run_ends_with_the_same_weights(tiny_mirage_dir, dataset, tmp_path):
    """6 steps in one go vs 3 steps, stop, resume from checkpoint-3 in a new trainer: identical weights (the run
    crosses an epoch boundary, so the data order and the scheduler must both be restored)."""
    schedule = dict(latent_stage=1, max_steps=6, learning_rate=5e-4, lr_scheduler_type="linear", warmup_steps=2)
    model, processor = load(tiny_mirage_dir)
    args = fast_args(tmp_path / "straight", save_strategy="steps", save_steps=3, **schedule)
    MirageSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor).train()

    resumed, processor = load(tiny_mirage_dir)
    args = fast_args(tmp_path / "resumed", **schedule)
    trainer = MirageSFTTrainer(model=resumed, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train(resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-3"))
    assert trainer.state.global_step == 6
    straight = dict(model.named_parameters())
    for name, p in resumed.named_parameters():
        assert torch.equal(p, straight[name]), name


# Methods the trainer adds (not overrides): none of them may shadow something of the TRL/transformers parent.
OWN_METHODS = {
    "_backbone",
    "_capture_outputs",
    "_check_latent_settings",
    "_prepare_rows",
    "_record_adapter_base",
    "_stage1_latent_loss",
}


def test_overrides_still_exist_on_the_parent_class():
    """TRL's private hooks change between versions: every method MirageSFTTrainer overrides must still exist on
    SFTTrainer with the same parameters, and the Trainer attribute it relies on must still be there."""
    own = {
        name for name, value in vars(MirageSFTTrainer).items() if callable(value) or isinstance(value, staticmethod)
    }
    overridden = own - OWN_METHODS
    assert overridden == {"__init__", "compute_loss", "_load_from_checkpoint"}
    for name in overridden:
        assert hasattr(SFTTrainer, name), name
    for name in ("compute_loss", "_load_from_checkpoint"):
        parent = inspect.signature(getattr(SFTTrainer, name)).parameters
        assert list(inspect.signature(getattr(MirageSFTTrainer, name)).parameters) == list(parent), name
    for name in OWN_METHODS:
        assert not hasattr(SFTTrainer, name), f"{name} now exists on SFTTrainer and would be shadowed"
    assert hasattr(Trainer, "loss_is_scaled_for_ga") and "current_gradient_accumulation_steps" in inspect.getsource(
        Trainer
    )
    # compute_loss adds to TRL's loss: it relies on TRL leaving the accumulation scaling to Trainer, on the fused
    # forward being TRL's first model call (where the hooks read the outputs), and on TRL's metric names.
    assert SFTTrainer.loss_is_scaled_for_ga is None and "loss_is_scaled_for_ga" not in vars(MirageSFTTrainer)
    source = inspect.getsource(SFTTrainer.compute_loss)
    assert "outputs = model(**inputs, fused_lm_head=True)" in source
    assert all(f'"{name}"' in source for name in ("entropy", "mean_token_accuracy", "num_tokens"))
    # The fused LM head TRL installs must still call the backbone as `base_model`, where the hook listens.
    assert 'backbone_attr = "base_model"' in inspect.getsource(add_fused_lm_head)


def test_adapter_checkpoint_loads_in_a_fresh_process_after_the_temporary_base_is_gone(dataset, tmp_path):
    """A Qwen2.5-VL base converted on load (what `tiny` is, in a temporary folder removed at exit): the adapter
    checkpoint records the converted Mirage base saved beside it, and PEFT's own loader reproduces the trained model
    in a fresh process outside the repository after the original base folder is deleted."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from mirage_tiny import build_tiny_base

    base = build_tiny_base(tmp_path / "temporary-base")
    output = tmp_path / "run"
    trainer = MirageSFTTrainer(
        model=str(base),
        args=fast_args(output, latent_stage=1, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=dataset,
        peft_config=language_model_lora_config(r=4, lora_alpha=8, lora_dropout=0.0),
    )
    trainer.train()
    checkpoint = output / "checkpoint-2"
    recorded = json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str((output / "mirage-base").resolve())
    assert json.loads((output / "mirage-base" / "config.json").read_text())["model_type"] == "mirage"
    shutil.rmtree(base)

    batch = trainer.data_collator([dataset[i] for i in range(2)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.save(inputs, tmp_path / "inputs.pt")
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(**inputs, return_dict=True).logits
    program = (
        "import json, sys, torch\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModel\n"
        "folder = sys.argv[1]\n"
        "base = json.load(open(folder + '/adapter_config.json'))['base_model_name_or_path']\n"
        "model = PeftModel.from_pretrained(AutoModel.from_pretrained(base, trust_remote_code=True), folder).eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(model(**torch.load(sys.argv[2]), return_dict=True).logits, sys.argv[3])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", program, str(checkpoint), str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=1e-5)
