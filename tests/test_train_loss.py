"""MirageSFTTrainer's loss: TRL's CE plus the stage-1 latent term, equal to the paper's formula written out here
independently (full logits, plain cross-entropy, plain cosine), in value and in gradient, for both stages and under
gradient accumulation; and TRL's own metrics still logged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import fast_args, load

import mirage_tasks
from trainers import MirageSFTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

GAMMA = 0.1


@pytest.fixture(scope="module")
def rows():
    """Four rows of two map sizes: different lengths, so padding and the token count matter."""
    data = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 4, levels="3-4", seed=5)
    return [data[i] for i in range(len(data))]


def reference_loss(model, batch, stage: int) -> torch.Tensor:
    """The loss the trainer must compute, from the model's plain forward (full logits, no fused head, no hook):
    CE = mean over label tokens of -log p(label); stage 1 adds mean over pads of 1 - cos(h_{p-1}, target_p)."""
    outputs = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    logits = outputs.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    if stage == 2:
        return ce
    latent = (1 - F.cosine_similarity(outputs.latent_hidden.float(), outputs.latent_targets.float(), dim=-1)).mean()
    return latent + GAMMA * ce


def loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", [1, 2])
def test_loss_and_gradients_equal_the_reference_formula(tiny_mirage_dir, rows, tmp_path, stage):
    model, processor = load(tiny_mirage_dir)
    model.train()
    args = fast_args(tmp_path, latent_stage=stage, latent_text_weight=GAMMA)
    trainer = MirageSFTTrainer(model=model, args=args, train_dataset=mirage_tasks.rows_to_dataset(rows))
    batch = trainer.data_collator(rows)
    assert (batch["labels"] != -100).sum() > 0 and batch["attention_mask"].min() == 0  # padded rows

    loss, grads = loss_and_grads(model, lambda: trainer.compute_loss(model, dict(batch)))
    expected, expected_grads = loss_and_grads(model, lambda: reference_loss(model, batch, stage))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert grads.keys() == expected_grads.keys() and len(grads) > 20
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)

    # The logs: ce_loss is the batch's CE, latent_loss the stage-1 term; TRL's own metrics are there too.
    metrics = trainer._metrics["train"]
    ce = reference_loss(model, batch, 2).item()
    assert metrics["ce_loss"] == [pytest.approx(ce, rel=1e-6)]
    if stage == 1:
        assert metrics["latent_loss"] == [pytest.approx(expected.item() - GAMMA * ce, rel=1e-5)]
        assert len(metrics["latent_target_cosine"]) == 1
    else:
        assert "latent_loss" not in metrics
    assert len(metrics["entropy"]) == len(metrics["mean_token_accuracy"]) == 1
    assert metrics["num_tokens"] == [batch["attention_mask"].sum().item()]


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_accumulation_divides_each_micro_batch_loss(tiny_mirage_dir, rows, tmp_path, stage):
    """With 2 accumulation steps, `training_step` back-propagates half of each micro-batch's loss (CE a token mean
    over that micro-batch, the latent term a mean over its pads), and returns that half."""
    model, processor = load(tiny_mirage_dir)
    model.train()
    args = fast_args(tmp_path, latent_stage=stage, gradient_accumulation_steps=2)
    trainer = MirageSFTTrainer(model=model, args=args, train_dataset=mirage_tasks.rows_to_dataset(rows))
    trainer.current_gradient_accumulation_steps = 2
    batch = trainer.data_collator(rows)

    model.zero_grad()
    returned = trainer.training_step(model, dict(batch))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    expected, expected_grads = loss_and_grads(model, lambda: reference_loss(model, batch, stage) / 2)
    torch.testing.assert_close(returned, expected, rtol=1e-6, atol=0)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
