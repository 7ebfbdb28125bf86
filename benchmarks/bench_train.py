"""Training-step cost of the two supervised stages, and of the official way to run stage 2, side by side in one run.

    python benchmarks/bench_train.py                 # tiny base, k = 4, batch 8, CPU (or the GPU if there is one)
    python benchmarks/bench_train.py --batch-size 8 --repeats 7 --threads 1

Three ways to take one optimizer step on the same 8 VSP-planning rows (mirage-direct, levels 3-6):

* stage 1 (ours): one batched forward with the helper-image targets teacher-forced into the pads, latent + CE loss;
* stage 2 (ours): one batched forward whose pads are filled by the model's own hidden-state chain (the chunked
  forward of `MirageModel`), CE loss, gradients through the chain;
* stage 2, official approach: rows one at a time (batch 1), k + 1 full forward passes per row -- pass j recomputes
  the whole sequence to read the hidden state before pad j, the last pass computes the loss -- then backward.
  Gradients flow through all passes, so it computes the same loss and gradients as ours (checked below).

Every step is forward + backward + AdamW step, timed round-robin (median of `--repeats`), with the trainer's own
`compute_loss` for our two stages. Memory: peak allocated CUDA memory on a GPU; on a CPU, the bytes of tensors
autograd saved for backward (activation memory, the part that differs between the three; `tracemalloc` does not see
torch's allocator). Targets: stage 2 <= 2x stage 1 time, and >= 3x the official approach's throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time

import datasets
import torch

import mirage_tasks
from trainers import MirageSFTConfig, MirageSFTTrainer, load_model_and_processor


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} thread(s)"


class SavedActivations(contextlib.AbstractContextManager):
    """Counts the bytes of distinct tensor storages autograd saves for backward inside the block."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def mib(self) -> float:
        return sum(self.storages.values()) / 2**20


def official_stage2_row_loss(model, row: dict[str, torch.Tensor]) -> torch.Tensor:
    """The official stage-2 recipe for one row (batch 1): k + 1 full forward passes.

    Pass j runs the whole sequence with pads 1..j-1 already filled and reads the hidden state before pad j; the last
    pass, with every pad filled, gives the loss. Unfilled pads keep their token embedding, which causal attention
    hides from the position being read.
    """
    pad_columns = (row["input_ids"][0] == model.config.latent_pad_token_id).nonzero().flatten()
    fills = model.get_input_embeddings()(row["input_ids"][0, pad_columns])  # (k, D)
    inputs = {key: value for key, value in row.items() if key != "labels"}
    for j in range(pad_columns.numel()):
        outputs = model(**inputs, latent_embeds=fills, use_cache=False)
        fills = torch.cat([fills[:j], outputs.latent_hidden[j : j + 1], fills[j + 1 :]])
    return model(**inputs, latent_embeds=fills, labels=row["labels"], use_cache=False).loss


def split_rows(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A stage-2 batch as batch-1 rows without padding, each with its own image."""
    rows, patch_offset = [], 0
    for r in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][r].bool()
        grid = batch["image_grid_thw"][r : r + 1]
        patches = int(grid.prod())
        rows.append(
            {
                "input_ids": batch["input_ids"][r][real].unsqueeze(0),
                "attention_mask": batch["attention_mask"][r][real].unsqueeze(0),
                "labels": batch["labels"][r][real].unsqueeze(0),
                "pixel_values": batch["pixel_values"][patch_offset : patch_offset + patches],
                "image_grid_thw": grid,
            }
        )
        patch_offset += patches
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latent-num-tokens", type=int, default=4)
    parser.add_argument("--levels", default="3-6")
    parser.add_argument("--image-scale", type=float, default=0.4375)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads on a CPU (default: torch's)")
    parser.add_argument(
        "--dataset", default=None, help="rows saved with `Dataset.save_to_disk` instead of generated ones"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # k and the image resize are chosen here, at conversion; the trainers take both from the model and processor.
    model, processor = load_model_and_processor("tiny", args.latent_num_tokens, image_scale=args.image_scale)
    model.to(device)
    if args.dataset:  # e.g. on a machine without the renderer's pygame
        rows = datasets.load_from_disk(args.dataset).select(range(args.batch_size))
    else:
        rows = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", args.batch_size, levels=args.levels, seed=0)
    trainers, batches = {}, {}
    with tempfile.TemporaryDirectory() as output_dir:
        for stage in (1, 2):
            config = MirageSFTConfig(
                output_dir,
                latent_stage=stage,
                use_cpu=device.type == "cpu",
                bf16=False,
                activation_checkpointing=False,
                report_to="none",
            )
            trainers[stage] = MirageSFTTrainer(
                model=model, args=config, train_dataset=rows, processing_class=processor
            )
            batch = trainers[stage].data_collator([trainers[stage].train_dataset[i] for i in range(len(rows))])
            batches[stage] = {k: v.to(device) for k, v in batch.items()}
    official_rows = split_rows(batches[2])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()

    def stage_step(stage: int) -> None:
        trainers[stage].compute_loss(model, dict(batches[stage])).backward()

    def official_step() -> None:
        for row in official_rows:
            (official_stage2_row_loss(model, row) / len(official_rows)).backward()

    # Same computation: the official loop's per-row loss equals our chained forward on that row alone.
    with torch.no_grad():
        ours = torch.stack([model(**row, use_cache=False).loss for row in official_rows])
        theirs = torch.stack([official_stage2_row_loss(model, row) for row in official_rows])
    agreement = (ours - theirs).abs().max().item()

    methods = {"stage 1 (ours)": lambda: stage_step(1), "stage 2 (ours)": lambda: stage_step(2)}
    methods["stage 2 official (k+1 passes, batch 1)"] = official_step
    times: dict[str, list[float]] = {name: [] for name in methods}
    memory: dict[str, float] = {}

    def timed(name: str, step) -> float:
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for name, step in methods.items():  # warm-up, and memory once per method
        timed(name, step)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            timed(name, step)
            memory[name] = torch.cuda.max_memory_allocated() / 2**20
        else:
            with SavedActivations() as saved:
                timed(name, step)
            memory[name] = saved.mib
    for _ in range(args.repeats):  # round-robin, so a slow spell of a shared machine hits all three alike
        for name, step in methods.items():
            times[name].append(timed(name, step))

    median = {name: statistics.median(values) for name, values in times.items()}
    k, batch_size = args.latent_num_tokens, args.batch_size
    seq = int(batches[2]["attention_mask"].sum(dim=1).float().mean())
    memory_kind = "peak CUDA MiB" if device.type == "cuda" else "saved activations MiB"
    print(f"\nbench_train: tiny Mirage base, k={k}, batch {batch_size}, {seq} tokens/row on average, {args.repeats} "
          f"repeats (median)\nmachine: {machine_name(device)}\n")  # fmt: skip
    header = f"{'method':<40} {'ms/step':>10} {'examples/s':>11} {memory_kind:>22}"
    print(header)
    print("-" * len(header))
    for name in methods:
        print(f"{name:<40} {1000 * median[name]:>10.1f} {batch_size / median[name]:>11.1f} {memory[name]:>22.1f}")
    s1, s2, official = median.values()
    print()
    print(f"stage 2 / stage 1 time:                    {s2 / s1:5.2f}x   (target <= 2x)")
    print(f"stage 2 throughput / official throughput:  {official / s2:5.2f}x   (target >= 3x)")
    print(f"official loop vs ours, per-row loss max |diff|: {agreement:.2e}")


if __name__ == "__main__":
    main()
