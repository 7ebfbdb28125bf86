"""MirageGRPOTrainer on the tiny Mirage model: rescoring equals generation to fp32 precision in both rescoring modes,
the chain carries the gradient through the latents and replay does not, rows keep their latents through TRL's
buffering, latent positions stay out of the loss, the guards fire before any weight is loaded, and a few steps train
the model without breaking the latent protocol.

Rollouts of a random model rarely open a latent block, so the tests add a `sequence_bias` on `<|latent_start|>` to the
generation settings: completions then hold zero, one or several blocks at different columns.
"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from trl import GRPOTrainer

import mirage_tasks
from modeling_mirage import LATENT_PLACEHOLDER, MirageForConditionalGeneration, MirageProcessor
from trainers import MirageGRPOConfig, MirageGRPOTrainer
from trainers.grpo_trainer import _UNSUPPORTED

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_GENERATIONS = 2


@pytest.fixture(scope="module")
def dataset():
    """4 mirage-direct planning prompts on 3x3 and 4x4 maps (prompt, images and the reward columns)."""
    data = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 4, levels="3-4", seed=0)
    return data.remove_columns(["completion", "helper_images"])


def load(folder: str):
    """Model and processor of the tiny Mirage folder; the processor resizes images as the tiny recipes do (one merged
    vision token per map cell), so rollouts and rescoring both see the processor's own resize."""
    processor = MirageProcessor.from_pretrained(folder)
    processor.image_scale = 0.4375
    return MirageForConditionalGeneration.from_pretrained(folder), processor


def grpo_args(output_dir, model, **overrides) -> MirageGRPOConfig:
    """A seconds-long CPU run: 4 rollouts per step (2 prompts x 2), 24 new tokens, blocks encouraged."""
    kwargs = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=4,
        num_generations=NUM_GENERATIONS,
        max_completion_length=24,
        max_steps=1,
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        generation_kwargs={"sequence_bias": [[[model.config.latent_start_token_id], 4.0]]},
        reward_funcs=["accuracy", "format"],
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return MirageGRPOConfig(**kwargs)


def generation_rows(dataset, prompts: int = 4) -> list[dict]:
    """A local generation batch as TRL's sampler builds it: each prompt repeated NUM_GENERATIONS times."""
    return [dataset[i] for i in range(prompts) for _ in range(NUM_GENERATIONS)]


@pytest.fixture
def recorded_generations(monkeypatch):
    """Every Mirage `generate` output of the test, with the raw logits of each step."""
    outputs = []
    original = MirageForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        if kwargs.get("generation_config") is not None:
            kwargs["generation_config"].output_logits = True  # the trainer passes its own copy
        output = original(self, *args, **kwargs)
        outputs.append(output)
        return output

    monkeypatch.setattr(MirageForConditionalGeneration, "generate", spy)
    return outputs


def rescore(trainer, batch, latents=None, model=None):
    """The trainer's own rescoring of a batch (the function TRL's loss calls), with `latents` as the rows' latents."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    trainer._scoring_latents = batch["latents"] if latents is None else latents
    try:
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model if model is None else model,
            input_ids,
            attention_mask,
            batch["completion_ids"].shape[1],
            batch_size=3,  # chunks that cut across prompt groups
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
            num_images=batch["num_images"],
        )
    finally:
        trainer._scoring_latents = None
    return logps


def loss_mask(batch) -> torch.Tensor:
    return (batch["completion_mask"] * batch["tool_mask"]).bool()


@pytest.mark.parametrize("rescoring", ["chain", "replay"])
def test_rescoring_equals_generation_for_every_text_token(
    tiny_mirage_dir, dataset, recorded_generations, tmp_path, rescoring
):
    model, processor = load(tiny_mirage_dir)
    # steps_per_generation 2 > gradient_accumulation_steps 1: TRL computes old-policy log-probs at rollout time.
    args = grpo_args(tmp_path, model, latent_rescoring=rescoring, steps_per_generation=2, beta=0.0)
    trainer = MirageGRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_rows(dataset))

    config = model.config
    pad, start, end = config.latent_token_ids
    completions = batch["completion_ids"]
    blocks = (completions == start).sum(dim=1)
    assert blocks.max() >= 2 and blocks.sum() >= 4, blocks  # several blocks, at different columns
    generation = recorded_generations[-1]
    steps = completions.shape[1]
    logits = torch.stack(generation.logits, dim=1)[:, :steps].float()  # raw logits of each sampled step
    generated = torch.log_softmax(logits, dim=-1).gather(-1, completions.unsqueeze(-1)).squeeze(-1)

    # Every pad and every (forced, fixed rule) end is out of the loss; every other completion token is in it.
    mask = loss_mask(batch)
    real = batch["completion_mask"].bool()
    latent_positions = (completions == pad) | (completions == end)
    assert torch.equal(mask, real & ~latent_positions)
    assert batch["num_items_in_batch"].item() == mask.sum().item()
    # Each row's latents are the vectors generation fed at its pads.
    for row, vectors in enumerate(batch["latents"]):
        assert vectors.shape == ((completions[row] == pad).sum().item(), config.text_config.hidden_size)

    old = batch["old_per_token_logps"]
    assert (old - generated)[mask].abs().max().item() <= 1e-5
    assert (rescore(trainer, batch) - generated)[mask].abs().max().item() <= 1e-5
    # The same rows with another row's latents: replay sees the difference, the chain recomputes its own.
    swapped = [batch["latents"][(r + 1) % len(batch["latents"])] for r in range(len(batch["latents"]))]
    shapes_match = all(a.shape == b.shape for a, b in zip(swapped, batch["latents"]))
    if shapes_match:
        deviation = (rescore(trainer, batch, swapped) - generated)[mask].abs().max().item()
        assert deviation > 1e-3 if rescoring == "replay" else deviation <= 1e-5


def test_rewards_see_latent_blocks_as_placeholders(tiny_mirage_dir, dataset, tmp_path):
    model, processor = load(tiny_mirage_dir)
    seen = []

    def probe(completions, **columns):
        seen.extend(completions)
        return [0.0] * len(completions)

    args = grpo_args(tmp_path, model, reward_funcs=["format"], reward_weights=[1.0])
    trainer = MirageGRPOTrainer(
        model=model, reward_funcs=[probe], args=args, train_dataset=dataset, processing_class=processor
    )
    trainer.model.train()
    batch = trainer._generate_and_score_completions(generation_rows(dataset, 2))
    start = model.config.latent_start_token_id
    assert len(seen) == 4
    for completion, ids in zip(seen, batch["completion_ids"]):
        text = completion[0]["content"]
        assert completion[0]["role"] == "assistant"
        assert text.count(LATENT_PLACEHOLDER) == (ids == start).sum().item()
        assert "<|latent" not in text


def test_loss_mask_follows_the_end_rule_and_rewards_text_shows_blocks(tiny_mirage_dir, dataset, tmp_path):
    model, processor = load(tiny_mirage_dir)
    trainer = MirageGRPOTrainer(
        model=model, args=grpo_args(tmp_path, model), train_dataset=dataset, processing_class=processor
    )
    config = model.config
    pad, start, end = config.latent_token_ids
    words = processor.tokenizer("The answer", add_special_tokens=False)["input_ids"]
    block = [start] + [pad] * 4 + [end]
    # Fixed rule: the pads and the end they force carry no loss; `<|latent_start|>` was chosen and does.
    assert trainer.latent_loss_mask(words + block + words) == [1] * len(words) + [1, 0, 0, 0, 0, 0] + [1] * len(words)
    assert trainer.completion_text(words + block + words) == "The answer<output_image>The answer"
    assert trainer.completion_text(words + [start, pad]) == "The answer<output_image>"  # cut off by the length limit
    # Predicted rule: an end the model chose is scored; one forced at the latent_max_tokens cap is not.
    config.latent_end_rule, config.latent_max_tokens = "predicted", 6
    assert trainer.latent_loss_mask([start, pad, pad, end]) == [1, 0, 0, 1]
    assert trainer.latent_loss_mask([start] + [pad] * 6 + [end]) == [1] + [0] * 6 + [0]


def _loss_and_grads(trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRL's loss on `batch` (through the trainer's rescoring) and the parameters' gradients."""
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad()
    return loss.detach(), grads


def test_chain_gradient_flows_through_the_latents_and_replay_does_not(tiny_mirage_dir, dataset, tmp_path):
    """d loss / d theta in chain mode = the replay gradient (latents held fixed) + the gradient that reaches the
    latents, pulled back through the chain that computes them: the chain rule, checked term by term."""
    model, processor = load(tiny_mirage_dir)
    args = grpo_args(tmp_path, model, beta=0.0, latent_rescoring="chain")
    trainer = MirageGRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's training loop
    batch = trainer._generate_and_score_completions(generation_rows(dataset, 2))
    assert sum(v.shape[0] for v in batch["latents"]) > 0
    # Fixed, non-zero advantages (a random model earns no reward).
    batch["advantages"] = torch.tensor([1.0, -1.0] * (len(batch["latents"]) // 2))

    chain_loss, chain_grads = _loss_and_grads(trainer, batch)
    trainer.args.latent_rescoring = "replay"
    leaves = [v.clone().requires_grad_() for v in batch["latents"]]
    replay_loss, replay_grads = _loss_and_grads(trainer, dict(batch, latents=leaves))
    torch.testing.assert_close(chain_loss, replay_loss, rtol=0, atol=1e-6)  # same value at theta = theta_old
    at_latents = torch.cat([leaf.grad for leaf in leaves])  # d loss / d latents
    assert at_latents.abs().sum() > 0

    # The replayed latents are constants: replay's gradient stops there. Pull d loss / d latents back through the
    # chain (the policy's own forward, whose pads are fed its hidden states) to get the missing term.
    policy = trainer._policy_model()
    chain = policy.model(
        input_ids=torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1),
        attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1),
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        use_cache=False,
    )
    torch.testing.assert_close(chain.latent_inputs.detach(), torch.cat(batch["latents"]), rtol=0, atol=1e-5)
    chain.latent_inputs.backward(at_latents)
    through = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}

    layers = [n for n in chain_grads if "language_model.layers" in n]
    assert layers and any(through[n].abs().max() > 0 for n in layers)
    for name, grad in chain_grads.items():
        expected = replay_grads[name] + through.get(name, torch.zeros_like(grad))
        torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-7, msg=name)
    differing = [n for n in layers if not torch.allclose(chain_grads[n], replay_grads[n], rtol=1e-3, atol=1e-7)]
    assert differing, "the chain's gradient should differ from replay's"


class _OldLogpsProbe(MirageGRPOTrainer):
    """Records, at every loss call, how far the current policy's rescoring of the buffered rows is from the
    old-policy log-probs TRL stored with them."""

    deviations: list[float]

    def _compute_loss(self, model, inputs):
        with torch.no_grad():
            logps = rescore(self, inputs, inputs["latents"], model)
        mask = loss_mask(inputs)
        self.deviations.append((logps - inputs["old_per_token_logps"])[mask].abs().max().item())
        return super()._compute_loss(model, inputs)


def test_rows_keep_their_latents_through_buffering_iterations_and_accumulation(tiny_mirage_dir, dataset, tmp_path):
    """steps_per_generation 2, num_iterations 2, gradient accumulation 2: every buffered slice is shuffled, split and
    reused; with the weights held fixed (lr 0), replaying each row's latents must give back its old log-probs."""
    model, processor = load(tiny_mirage_dir)
    args = grpo_args(
        tmp_path,
        model,
        latent_rescoring="replay",
        per_device_train_batch_size=2,
        steps_per_generation=2,
        num_iterations=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=0.0,
    )
    trainer = _OldLogpsProbe(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.deviations = []
    trainer.train()
    assert len(trainer.deviations) == 4  # 2 optimizer steps x 2 micro-batches, one generation reused twice
    assert max(trainer.deviations) <= 1e-5, trainer.deviations


def test_a_few_steps_change_the_weights_and_keep_the_latent_protocol(tiny_mirage_dir, dataset, tmp_path):
    model, processor = load(tiny_mirage_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def latent_blocks(completions, **columns):
        # A random model earns no task reward; the number of blocks varies between rollouts, so advantages do too.
        return [float(c[0]["content"].count(LATENT_PLACEHOLDER)) for c in completions]

    args = grpo_args(tmp_path, model, max_steps=2, learning_rate=1e-3, beta=0.01, reward_weights=[1.0])
    trainer = MirageGRPOTrainer(
        model=model, reward_funcs=[latent_blocks], args=args, train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any("language_model.layers" in n for n in changed), changed
    assert not [n for n in changed if n.startswith("model.visual.")]  # the vision tower stays frozen
    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logged) == 2 and all("kl" in entry for entry in logged)
    # The card TRL's hook writes is the Mirage card, with this run as its GRPO stage.
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "GRPO" in card and "fine-tuned version of" not in card

    # The trained model still decodes latent blocks of exactly k pads, and replays its own rollouts exactly.
    model.eval()
    config = model.config
    pad, start, end = config.latent_token_ids
    rows = [dataset[0], dataset[1]]
    prompts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True) for row in rows]
    inputs = processor(text=prompts, images=[row["images"][0] for row in rows], padding=True, return_tensors="pt")
    out = model.generate(
        **inputs,
        max_new_tokens=16,
        do_sample=False,
        sequence_bias={(start,): 20.0},
        return_dict_in_generate=True,
        output_logits=True,
    )
    completions = out.sequences[:, inputs["input_ids"].shape[1] :]
    for row in completions.tolist():
        assert row.count(start) >= 1
        for index, token in enumerate(row):
            if token == start and index + config.latent_num_tokens + 1 < len(row):
                assert row[index + 1 : index + 1 + config.latent_num_tokens] == [pad] * config.latent_num_tokens
                assert row[index + 1 + config.latent_num_tokens] == end
    replay = model(
        input_ids=out.sequences,
        attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(completions)], dim=1),
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        latent_embeds=out.latents,
    )
    steps = completions.shape[1]
    torch.testing.assert_close(replay.logits[:, -steps - 1 : -1], torch.stack(out.logits, dim=1), rtol=0, atol=1e-4)


# ---- guards -------------------------------------------------------------------------------------------------------


@pytest.fixture
def no_weight_loading(monkeypatch):
    """Fail the test if any weight is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the guard fired")

    monkeypatch.setattr(MirageForConditionalGeneration, "from_pretrained", refuse)
    monkeypatch.setattr(MirageForConditionalGeneration, "from_base", refuse)


@pytest.mark.parametrize("option", sorted(_UNSUPPORTED))
def test_unsupported_rollout_backends_are_refused_before_loading(tiny_mirage_dir, no_weight_loading, tmp_path, option):
    overrides, kwargs = {}, {}
    if option in ("use_vllm", "use_transformers_continuous_batching"):
        overrides[option] = True
    else:
        kwargs[option] = [lambda x: x] if option == "tools" else (lambda *a, **k: None)
    args = MirageGRPOConfig(str(tmp_path), use_cpu=True, report_to="none", **overrides)
    with pytest.raises(ValueError, match=rf"does not support {option}: .*(hidden state|token ids only)") as error:
        MirageGRPOTrainer(model=tiny_mirage_dir, args=args, train_dataset=None, **kwargs)
    assert "generate" in str(error.value) or "feeds" in str(error.value)


def test_a_reference_that_is_not_mirage_is_refused_before_loading(tiny_base_dir, no_weight_loading, tmp_path):
    args = MirageGRPOConfig(str(tmp_path), use_cpu=True, report_to="none", beta=0.01)
    for name in ("tiny", tiny_base_dir):
        with pytest.raises(ValueError, match=r"'qwen2_5_vl' checkpoint, not a Mirage model.*save_for_hub.*PEFT"):
            MirageGRPOTrainer(model=name, args=args)


def test_a_model_converted_in_memory_needs_peft_or_beta_zero(tiny_base_dir, dataset, tmp_path):
    from trainers.model_setup import language_model_lora_config

    processor = MirageProcessor.from_base(tiny_base_dir)
    model = MirageForConditionalGeneration.from_base(tiny_base_dir, processor=processor)
    args = MirageGRPOConfig(str(tmp_path), use_cpu=True, report_to="none", beta=0.01)
    with pytest.raises(ValueError, match=r"reference model.*'qwen2_5_vl' checkpoint"):
        MirageGRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    # With PEFT the reference is the adapter-free policy: accepted, and no separate reference is built.
    trainer = MirageGRPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=language_model_lora_config(r=2, lora_alpha=4),
    )
    assert trainer.ref_model is None and trainer.beta == 0.01
    # Its adapter checkpoints name a converted Mirage base saved beside them, not the temporary Qwen2.5-VL folder.
    recorded = trainer.accelerator.unwrap_model(trainer.model).peft_config["default"].base_model_name_or_path
    assert recorded == str((tmp_path / "mirage-base").resolve())
    assert json.loads((tmp_path / "mirage-base" / "config.json").read_text())["model_type"] == "mirage"
    # TRL scores the reference with the adapters disabled: that call must use the model's own chain, never replay.
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    assert not trainer._is_reference(trainer.model)
    with peft_model.disable_adapter():
        assert trainer._is_reference(trainer.model)


def test_processor_padding_is_forced_left_and_latent_settings_are_checked(tiny_mirage_dir, dataset, tmp_path):
    model, processor = load(tiny_mirage_dir)
    processor.tokenizer.padding_side = "right"
    trainer = MirageGRPOTrainer(
        model=model, args=grpo_args(tmp_path, model), train_dataset=dataset, processing_class=processor
    )
    assert trainer.processing_class.tokenizer.padding_side == "left"
    # Rollouts never sample a vision placeholder: the rescoring would have no pixels for it.
    placeholders = {model.config.image_token_id, model.config.video_token_id}
    assert placeholders <= set(trainer.generation_config.suppress_tokens)
    assert placeholders <= set(trainer.generation_kwargs["suppress_tokens"])
    assert trainer.ref_model is not None and trainer.ref_model.config.model_type == "mirage"
    with pytest.raises(ValueError, match="latent_num_tokens disagree: model config 4, processor 4, .*Config 3"):
        MirageGRPOTrainer(
            model=model,
            args=grpo_args(tmp_path, model, latent_num_tokens=3),
            train_dataset=dataset,
            processing_class=processor,
        )


def test_config_checks_and_paper_defaults(tmp_path):
    args = MirageGRPOConfig(str(tmp_path), use_cpu=True, report_to="none")
    assert (args.learning_rate, args.num_generations, args.beta, args.loss_type) == (1e-6, 5, 0.01, "grpo")
    assert list(args.reward_funcs) == ["accuracy", "format"] and list(args.reward_weights) == [0.9, 0.1]
    assert args.latent_rescoring == "chain" and args.disable_dropout and args.bf16 is False
    assert args.latent_freeze_vision and args.activation_checkpointing
    with pytest.raises(ValueError, match="latent_rescoring must be one of"):
        MirageGRPOConfig(str(tmp_path), use_cpu=True, latent_rescoring="cached")
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        MirageGRPOConfig(str(tmp_path), use_cpu=True, remove_unused_columns=True)


def test_every_overridden_trl_method_still_exists_with_a_compatible_signature():
    overridden = [
        name
        for name, value in vars(MirageGRPOTrainer).items()
        if callable(value) and not name.startswith("__") and hasattr(GRPOTrainer, name)
    ]
    expected = {"_generate", "_generate_and_score_completions", "_compute_loss", "_get_per_token_logps_and_entropies"}
    assert expected <= set(overridden), overridden
    for name in expected:
        parent = inspect.signature(getattr(GRPOTrainer, name)).parameters
        ours = inspect.signature(getattr(MirageGRPOTrainer, name)).parameters
        takes_rest = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values())
        assert all(p in ours or takes_rest for p in parent), (name, list(parent), list(ours))
    # The parent's private helpers the trainer relies on.
    for helper in ("_tokenize_prompts", "_generate_single_turn", "_calculate_rewards"):
        assert callable(getattr(GRPOTrainer, helper))
