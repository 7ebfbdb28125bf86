"""One stage-3 (GRPO) step of `MirageGRPOTrainer`, broken into its parts, and chain vs replay rescoring, in one run.

    python benchmarks/bench_grpo.py                    # tiny model, 2 prompts x 5 rollouts, CPU (or the GPU)
    python benchmarks/bench_grpo.py --prompts 4 --repeats 5 --threads 1

The step of the trainer, on the same VSP-planning prompts (mirage-direct, levels 3-6), timed part by part:

* generation: Mirage `generate` of every rollout (sampling, per-row latent blocks, KV cache), TRL's bookkeeping;
* reference: the reference model's log-probabilities of the rollouts (its own latent chain, no gradient);
* rewards and the rest of TRL's scoring (decoding, rewards, advantages);
* loss forward + backward: TRL's GRPO loss through the trainer's rescoring, with `latent_rescoring="chain"` (the
  exact gradient, through the latents) and `"replay"` (the recorded latents as constants), on the same rollouts;
* optimizer: the AdamW step.

A random tiny model seldom opens a latent block, so the rollouts get a `sequence_bias` on `<|latent_start|>`: every
completion then holds blocks, as a trained one does. Chain and replay alternate round-robin (median of `--repeats`),
so a slow spell of a shared machine hits both alike. Targets: chain rescoring <= 1.5x replay; generation, not
rescoring, is where a step's time goes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict

import torch
from bench_train import machine_name

import mirage_tasks
from trainers import MirageGRPOConfig, MirageGRPOTrainer, load_model_and_processor, save_for_hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="a Mirage checkpoint, or 'tiny' (converted and saved first)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=5)
    parser.add_argument("--max-completion-length", type=int, default=32)
    parser.add_argument("--levels", default="3-6")
    parser.add_argument(
        "--image-scale",
        type=float,
        default=0.4375,
        help="the tiny model's processor resize (a checkpoint keeps its own)",
    )
    parser.add_argument("--start-bias", type=float, default=3.0, help="sequence_bias of <|latent_start|>")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on a CPU (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    rows = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", args.prompts, levels=args.levels, seed=0)
    rows = rows.remove_columns(["completion", "helper_images"])

    with tempfile.TemporaryDirectory() as folder:
        model_path = args.model
        if model_path == "tiny":  # the reference model is loaded from the policy's checkpoint: save it first
            model, processor = load_model_and_processor("tiny", image_scale=args.image_scale)
            model_path = str(save_for_hub(model, processor, folder))
        batch_size = args.prompts * args.num_generations
        config = MirageGRPOConfig(
            folder,
            use_cpu=device.type == "cpu",
            bf16=False,
            report_to="none",
            per_device_train_batch_size=batch_size,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            activation_checkpointing=False,
            beta=0.01,
            model_init_kwargs={"dtype": torch.float32},
        )
        trainer = MirageGRPOTrainer(model=model_path, args=config, train_dataset=rows)
    model = trainer.model.to(device)
    if trainer.ref_model is not None:
        trainer.ref_model.to(device)
    start_id = model.config.latent_start_token_id
    trainer.generation_config.sequence_bias = {(start_id,): args.start_bias}
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    generation_rows = [rows[i] for i in range(args.prompts) for _ in range(args.num_generations)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    # Time the parts of TRL's rollout-and-scoring by wrapping the trainer's own methods on this instance.
    parts: dict[str, float] = defaultdict(float)

    def timing(name, method, part_of=None):
        def timed(*a, **k):
            begin = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                label = part_of(*a) if part_of else name
                if label:
                    parts[label] += time.perf_counter() - begin

        return timed

    trainer._generate = timing("generation", trainer._generate)
    trainer._get_per_token_logps_and_entropies = timing(
        "", trainer._get_per_token_logps_and_entropies, lambda m, *a: "reference" if trainer._is_reference(m) else ""
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def rollout():
        parts.clear()
        sync()
        begin = time.perf_counter()
        batch = trainer._generate_and_score_completions(generation_rows)
        sync()
        total = time.perf_counter() - begin
        return batch, {**parts, "rewards and scoring": total - sum(parts.values())}

    def loss_step(batch, mode: str) -> tuple[float, float]:
        trainer.args.latent_rescoring = mode
        optimizer.zero_grad(set_to_none=True)
        sync()
        begin = time.perf_counter()
        trainer._compute_loss(model, batch).backward()
        sync()
        middle = time.perf_counter()
        optimizer.step()
        sync()
        return middle - begin, time.perf_counter() - middle

    batch, _ = rollout()  # warm-up
    loss_step(batch, "chain"), loss_step(batch, "replay")
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        batch, rollout_parts = rollout()
        for name, seconds in rollout_parts.items():
            times[name].append(seconds)
        for mode in ("chain", "replay"):  # round-robin on the same rollouts
            backward, step = loss_step(batch, mode)
            times[f"loss forward+backward ({mode})"].append(backward)
            times["optimizer"].append(step)

    blocks = (batch["completion_ids"] == start_id).sum(dim=1).float()
    # The chain runs one chunk per column where some row has a pad (after the trainer aligns the first blocks).
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    aligned = trainer._align_first_blocks(input_ids, torch.ones_like(input_ids), {})
    aligned_ids = input_ids if aligned is None else aligned[1]
    chunks = int((aligned_ids == model.config.latent_pad_token_id).any(dim=0).sum()) + 1
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\nbench_grpo: {args.model} Mirage model, {args.prompts} prompts x {args.num_generations} rollouts, "
        f"{args.max_completion_length} new tokens, {blocks.mean():.1f} latent blocks per completion ({chunks} chain "
        f"chunks in the last batch), prompts of "
        f"{batch['prompt_mask'].sum(dim=1).float().mean():.0f} tokens, {args.repeats} repeats (median)\n"
        f"machine: {machine_name(device)}\n"
    )
    chain_step = sum(median[n] for n in ("generation", "reference", "rewards and scoring", "optimizer"))
    chain_step += median["loss forward+backward (chain)"]
    header = f"{'part of one step (chain rescoring)':<40} {'ms':>10} {'share':>8}"
    print(header)
    print("-" * len(header))
    for name in ("generation", "reference", "rewards and scoring", "loss forward+backward (chain)", "optimizer"):
        print(f"{name:<40} {1000 * median[name]:>10.1f} {median[name] / chain_step:>8.1%}")
    print(f"{'total':<40} {1000 * chain_step:>10.1f}")
    chain, replay = median["loss forward+backward (chain)"], median["loss forward+backward (replay)"]
    print(f"\nloss forward+backward, replay rescoring: {1000 * replay:.1f} ms")
    print(f"chain / replay rescoring time:        {chain / replay:5.2f}x   (target <= 1.5x)")
    print(f"generation / chain rescoring time:    {median['generation'] / chain:5.2f}x   (target > 1x)")


if __name__ == "__main__":
    main()
