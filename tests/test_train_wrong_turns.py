"""Wrong turns a new user takes with the training entry points, each met early with a message that says what is wrong
and what to do; and the warnings a plain run used to print, gone at their cause."""

from __future__ import annotations

import json
import warnings

import pytest
from train_helpers import fast_args, load

import mirage_tasks
from trainers import MirageSFTConfig, MirageSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


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
