"""MirageSFTTrainer on the tiny base: both stages learn, the right parameters move, the stage-1 targets and the stage-2
chain are what the paper says, gradient checkpointing is exact, checkpoints load as remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import fast_args, load

import mirage_tasks
from trainers import MirageSFTTrainer
from trainers.model_setup import REMOTE_CODE_FILES
from trainers.sft_trainer import mean_pairwise_cosine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    """16 mirage-direct planning rows on 3x3 maps (about 310 tokens each)."""
    return mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 16, levels=3, seed=0)


@pytest.fixture(scope="module")
def mixed_rows():
    """Rows of two map sizes, so prompts (and latent blocks) sit at different columns."""
    data = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 4, levels="3-4", seed=5)
    return [data[i] for i in range(len(data))]


def logged(trainer, key: str) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def falls(values: list[float], factor: float) -> bool:
    """Mean of the last five below `factor` x the mean of the first five."""
    return sum(values[-5:]) / 5 < factor * sum(values[:5]) / 5


def test_stage1_learns_trains_the_language_model_and_leaves_the_vision_tower(tiny_mirage_dir, dataset, tmp_path):
    model, processor = load(tiny_mirage_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = MirageSFTTrainer(
        model=model, args=fast_args(tmp_path, latent_stage=1), train_dataset=dataset, processing_class=processor
    )
    trainer.train()

    loss, ce, latent = logged(trainer, "loss"), logged(trainer, "ce_loss"), logged(trainer, "latent_loss")
    assert len(loss) == len(ce) == len(latent) == 30
    assert falls(loss, 0.7) and falls(ce, 0.8) and falls(latent, 0.5), (loss, ce, latent)
    cosine = logged(trainer, "latent_target_cosine")
    assert len(cosine) == 30 and all(-1.0 <= c <= 1.0 for c in cosine)

    after = dict(model.named_parameters())
    visual = [name for name in before if name.startswith("model.visual.")]
    language = [name for name in before if not name.startswith("model.visual.")]
    assert visual and all(not after[name].requires_grad for name in visual)
    assert all(torch.equal(before[name], after[name]) for name in visual)
    unchanged = [name for name in language if torch.equal(before[name], after[name])]
    assert unchanged == [], unchanged  # every language-model weight (embeddings, layers, norm, head) moved


def test_stage2_learns_with_text_loss_only(tiny_mirage_dir, dataset, tmp_path):
    model, processor = load(tiny_mirage_dir)
    trainer = MirageSFTTrainer(
        model=model, args=fast_args(tmp_path, latent_stage=2), train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    loss, ce = logged(trainer, "loss"), logged(trainer, "ce_loss")
    assert len(loss) == 30 and falls(loss, 0.7), loss
    assert loss == pytest.approx(ce, rel=1e-4)  # stage 2 is CE only
    assert not logged(trainer, "latent_loss")


def _hand_chunk_means(model, pixel_values, grid_thw, k: int) -> torch.Tensor:
    """Vision tower (merger included) -> per image: merged patches in raster order, trimmed to a multiple of k, k
    contiguous chunks, each averaged. Written out with loops, independently of the model's implementation."""
    with torch.no_grad():
        merged = model.model.visual(pixel_values, grid_thw=grid_thw).pooler_output  # (sum n_i, hidden)
    targets, offset = [], 0
    for t, h, w in grid_thw.tolist():
        n = t * h * w // 4
        image = merged[offset : offset + n]
        offset += n
        size = n // k
        for j in range(k):
            targets.append(image[j * size : (j + 1) * size].mean(dim=0))
    return torch.stack(targets)


def test_stage1_targets_are_chunk_means_of_the_helper_image(tiny_mirage_dir, mixed_rows, tmp_path):
    model, processor = load(tiny_mirage_dir)
    trainer = MirageSFTTrainer(
        model=model,
        args=fast_args(tmp_path, latent_stage=1),
        train_dataset=mirage_tasks.rows_to_dataset(mixed_rows),
        processing_class=processor,
    )
    batch = trainer.data_collator(mixed_rows)
    k = model.config.latent_num_tokens
    expected = _hand_chunk_means(model, batch["helper_pixel_values"], batch["helper_image_grid_thw"], k)
    assert batch["helper_image_grid_thw"].tolist() == [[1, 6, 6], [1, 8, 8]] * 2  # 9 and 16 merged patches

    model.train()
    outputs = model(**batch, use_cache=False)
    torch.testing.assert_close(outputs.latent_targets, expected, rtol=0, atol=1e-6)
    # The targets are what the pads were fed, and the trainer's latent loss compares them with the hidden states
    # one position earlier.
    torch.testing.assert_close(outputs.latent_inputs, expected, rtol=0, atol=1e-6)
    hidden = outputs.latent_hidden
    rows, cols = outputs.latent_positions.unbind(-1)
    torch.testing.assert_close(
        hidden,
        model.model(**{k_: v for k_, v in batch.items() if k_ != "labels"}, use_cache=False).last_hidden_state[
            rows, cols - 1
        ],
    )
    trainer.compute_loss(model, dict(batch))
    expected_loss = (1 - F.cosine_similarity(hidden, expected, dim=-1)).mean().item()
    assert trainer._metrics["train"]["latent_loss"][-1] == pytest.approx(expected_loss, rel=1e-5)
    grouped = expected.reshape(4, k, -1)
    pairwise = [
        F.cosine_similarity(grouped[a], grouped[b], dim=-1).mean() for a in range(4) for b in range(4) if a != b
    ]
    assert mean_pairwise_cosine(expected, k).item() == pytest.approx(torch.stack(pairwise).mean().item(), rel=1e-5)
    assert trainer._metrics["train"]["latent_target_cosine"][-1] == pytest.approx(
        torch.stack(pairwise).mean().item(), rel=1e-5
    )


def _chain_gradients(model, trainer, batch, replay: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of a loss on the text after the latent block w.r.t. the final hidden states (B, T, D) of every
    language-model call, stitched back together, plus the pad positions."""
    pieces = []

    def keep(_module, _args, output):
        output.last_hidden_state.retain_grad()
        pieces.append(output.last_hidden_state)

    labels = batch["labels"].clone()
    end = model.config.latent_end_token_id
    for r in range(labels.shape[0]):
        end_col = int((batch["input_ids"][r] == end).nonzero()[0])
        labels[r, : end_col + 1] = -100  # only text after the block: no direct route to the latent positions
    inputs = dict(batch, labels=labels)
    if replay:
        with torch.no_grad():
            inputs["latent_embeds"] = model(**batch, use_cache=False).latent_inputs.detach()
    handle = model.model.language_model.register_forward_hook(keep)
    try:
        model.zero_grad()
        trainer.compute_loss(model, inputs).backward()
    finally:
        handle.remove()
    grads = torch.cat([p.grad for p in pieces], dim=1)
    pads = (batch["input_ids"] == model.config.latent_pad_token_id).nonzero()
    return grads, pads


def test_stage2_text_loss_reaches_the_hidden_state_chain(tiny_mirage_dir, mixed_rows, tmp_path):
    model, processor = load(tiny_mirage_dir)
    trainer = MirageSFTTrainer(
        model=model,
        args=fast_args(tmp_path, latent_stage=2),
        train_dataset=mirage_tasks.rows_to_dataset(mixed_rows),
        processing_class=processor,
    )
    batch = trainer.data_collator(mixed_rows)
    model.train()
    grads, pads = _chain_gradients(model, trainer, batch, replay=False)
    assert pads.shape[0] == 4 * model.config.latent_num_tokens
    # The hidden state one position before a pad feeds only that pad (its own next-token label is masked), so a
    # non-zero gradient there is the gradient through the latent chain.
    norms = grads[pads[:, 0], pads[:, 1] - 1].norm(dim=-1)
    assert (norms > 0).all(), norms
    # Control: the same latents replayed as constants cut the chain, and those gradients vanish.
    grads, pads = _chain_gradients(model, trainer, batch, replay=True)
    assert grads[pads[:, 0], pads[:, 1] - 1].abs().max() == 0


def test_stage2_gradient_checkpointing_is_exact(tiny_mirage_dir, mixed_rows, tmp_path):
    model, processor = load(tiny_mirage_dir)
    trainer = MirageSFTTrainer(
        model=model,
        args=fast_args(tmp_path, latent_stage=2),
        train_dataset=mirage_tasks.rows_to_dataset(mixed_rows),
        processing_class=processor,
    )
    batch = trainer.data_collator(mixed_rows)
    model.train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_plain, grads_plain), (loss_ckpt, grads_ckpt) = results
    assert loss_plain == loss_ckpt
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 20
    for name in grads_plain:
        torch.testing.assert_close(grads_plain[name], grads_ckpt[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("stage", [1, 2])
def test_aligning_latent_blocks_leaves_the_loss_unchanged(tiny_mirage_dir, mixed_rows, tmp_path, stage):
    """Left padding that lines up the latent blocks only moves padding: same loss, same gradients (fp32)."""
    model, processor = load(tiny_mirage_dir)
    model.train()
    results = []
    for align in (False, True):
        args = fast_args(tmp_path / str(align), latent_stage=stage, latent_align_blocks=align)
        trainer = MirageSFTTrainer(
            model=model, args=args, train_dataset=mirage_tasks.rows_to_dataset(mixed_rows), processing_class=processor
        )
        batch = trainer.data_collator(mixed_rows)
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_plain, grads_plain), (loss_aligned, grads_aligned) = results
    torch.testing.assert_close(loss_aligned, loss_plain, rtol=0, atol=1e-5)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_aligned[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_stage2_refuses_reentrant_checkpointing(tiny_mirage_dir, dataset, tmp_path):
    args = fast_args(
        tmp_path,
        latent_stage=2,
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": True},
    )
    with pytest.raises(ValueError, match="non-reentrant"):
        MirageSFTTrainer(model=tiny_mirage_dir, args=args, train_dataset=dataset)


def test_stage2_trains_under_gradient_checkpointing(tiny_mirage_dir, dataset, tmp_path):
    """TRL's default (checkpointing on) works for the chain: same losses as without it."""
    losses = []
    for checkpointing in (False, True):
        model, processor = load(tiny_mirage_dir)
        args = fast_args(
            tmp_path / str(checkpointing), latent_stage=2, max_steps=3, activation_checkpointing=checkpointing
        )
        trainer = MirageSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
        trainer.train()
        losses.append(logged(trainer, "loss"))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_checkpoints_load_as_remote_code(tiny_mirage_dir, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = load(tiny_mirage_dir)
    args = fast_args(tmp_path, latent_stage=1, max_steps=2, save_strategy="steps", save_steps=1)
    trainer = MirageSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    final = tmp_path / "final"
    trainer.save_model(str(final))
    for folder in (tmp_path / "checkpoint-1", tmp_path / "checkpoint-2", final):
        files = {p.name for p in Path(folder).iterdir()}
        assert set(REMOTE_CODE_FILES) <= files and "model.safetensors" in files, files
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert {"AutoConfig", "AutoModel", "AutoModelForImageTextToText"} <= set(auto_map)
    batch = trainer.data_collator([dataset[i] for i in range(2)])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.save(inputs, tmp_path / "inputs.pt")
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    # A fresh interpreter outside the repository, offline: only the folder's remote code can define the classes
    # (this process has imported modeling_mirage, whose Auto registrations would take precedence here).
    program = (
        "import sys, torch\n"
        "from transformers import AutoModel, AutoProcessor\n"
        "folder, inputs = sys.argv[1], torch.load(sys.argv[2])\n"
        "model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        "assert type(processor).__module__.startswith('transformers_modules'), type(processor).__module__\n"
        "with torch.no_grad():\n"
        "    torch.save(model(**inputs).logits, sys.argv[3])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for folder in (tmp_path / "checkpoint-2", final):
        result = subprocess.run(
            [sys.executable, "-c", program, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "logits.pt")],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=0)
