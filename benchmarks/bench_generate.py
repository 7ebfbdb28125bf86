"""Generation speed: Mirage `generate` with latent blocks in every row vs plain Qwen2.5-VL `generate`, side by side.

In one run, on the same weights and the same prompts (a rendered VSP map and its prompt, left-padded batches):

* plain `Qwen2_5_VLForConditionalGeneration.generate` (stock class, the same weights, no latent tokens),
* Mirage `generate`, every row opening a latent block of k pads every `--block-every` tokens,
* a naive reference that recomputes the whole prefix at every step (no KV cache; what Coconut-style loops do),

at batch 1 and batch `--batch`, all running exactly `--new-tokens` decoding steps (EOS is suppressed in every
variant by the same logits processor, which also forces the block openings, so all pay the same processor cost).
Prints tokens/s, the Mirage/plain ratio at each batch size, the batch/1 throughput ratio and peak memory
(CUDA: `max_memory_allocated`; CPU: growth of resident memory during one run).

    python benchmarks/bench_generate.py                       # embedded tiny base, CPU
    python benchmarks/bench_generate.py --model Qwen/Qwen2.5-VL-7B-Instruct --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2_5_VLForConditionalGeneration

from modeling_mirage import MirageForConditionalGeneration, MirageProcessor


class ForceEvery(LogitsProcessor):
    """Suppresses the end tokens and forces `token` every `every` steps (counted from the first generated token)."""

    def __init__(self, token: int | None, every: int, prompt_length: int, suppress: list[int]):
        self.token, self.every, self.prompt_length, self.suppress = token, every, prompt_length, suppress

    def __call__(self, input_ids, scores):
        scores[:, self.suppress] = float("-inf")
        step = input_ids.shape[1] - self.prompt_length
        if self.token is not None and step % self.every == 0:
            scores[:, :] = float("-inf")
            scores[:, self.token] = 0.0
        return scores


def build_inputs(processor, batch: int):
    """A batch of VSP-planning chat prompts with rendered maps of different sizes, left-padded."""
    from mirage_tasks import build_dataset

    rows = build_dataset("vsp_planning", "mirage-direct", n=batch, levels=(3, 4, 5, 6), seed=0)
    texts, images = [], []
    for row in rows:
        texts.append(processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True))
        images.append(row["images"][0])  # resized by the processor (its image_scale)
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))


def load_models(args):
    if args.model is None:
        from mirage_tiny import tiny_base_path

        base = tiny_base_path()
    else:
        base = args.model
    dtype = getattr(torch, args.dtype)
    processor = MirageProcessor.from_base(base, latent_num_tokens=args.k, image_scale=args.image_scale)
    mirage = MirageForConditionalGeneration.from_base(base, processor=processor, dtype=dtype).to(args.device).eval()
    plain = Qwen2_5_VLForConditionalGeneration(mirage.config).to(dtype).to(args.device).eval()
    plain.load_state_dict(mirage.state_dict())  # same weights, stock class
    plain.generation_config = mirage.generation_config
    return processor, mirage, plain


def prepare_variant(name: str, args, models):
    """`(generate-once callable, batch)` for one variant."""
    processor, mirage, plain = models
    batch = args.batch if name.endswith("batch") else 1
    inputs = {k: v.to(args.device) for k, v in build_inputs(processor, batch).items()}
    prompt_length = inputs["input_ids"].shape[1]
    eos = mirage.generation_config.eos_token_id
    suppress = list(eos) if isinstance(eos, list) else [eos]
    is_plain = name.startswith("plain")
    model = plain if is_plain else mirage
    # plain forces an ordinary token where Mirage opens a block, so both pay the same processor cost
    token = processor.tokenizer.convert_tokens_to_ids("R") if is_plain else mirage.config.latent_start_token_id
    steps = args.naive_tokens if name.startswith("naive") else args.new_tokens
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=not name.startswith("naive"))

    @torch.no_grad()
    def once():
        processors = LogitsProcessorList([ForceEvery(token, args.block_every, prompt_length, suppress)])
        start = time.perf_counter()
        out = model.generate(**inputs, logits_processor=processors, **kwargs)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out[:, prompt_length:]

    return once, batch


def run_variants(names: list[str], args, models) -> dict:
    """Time the variants round-robin (so drifts in machine speed hit all alike); best of `--repeats` each."""
    prepared = {name: prepare_variant(name, args, models) for name in names}
    results = {}
    for once, _ in prepared.values():  # warm-up
        once()
    for repeat in range(args.repeats):
        for name, (once, batch) in prepared.items():
            if name.startswith("naive") and repeat > 0:
                continue  # the slow reference is only there for scale
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, new = once()
            best = results.get(name)
            if best is None or seconds < best["seconds"]:
                pads = int((new == models[1].config.latent_pad_token_id).sum())
                results[name] = {
                    "batch": batch,
                    "steps": new.shape[1],
                    "seconds": seconds,
                    "tokens_per_s": batch * new.shape[1] / seconds,
                    "latent_pads": pads,
                }
                if args.device == "cuda":
                    results[name]["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return results


def rss_increase_mb(fn) -> float:
    """Peak growth of this process's resident memory (MB) while `fn` runs, sampled every millisecond."""
    page = os.sysconf("SC_PAGE_SIZE")

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    before, peak, done = resident(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(0, max(peak[0], resident()) - before) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Qwen2.5-VL checkpoint; default: the embedded tiny base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="latent tokens per block")
    parser.add_argument(
        "--image-scale",
        type=float,
        default=0.4375,
        help="the processor's image resize; 0.4375 puts one map cell on one merged 28-px token, as the tiny recipes train",
    )
    parser.add_argument("--new-tokens", type=int, default=192)
    parser.add_argument("--naive-tokens", type=int, default=24, help="steps for the (slow) no-cache reference")
    parser.add_argument("--block-every", type=int, default=16, help="open a latent block every N tokens")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    variants = ["plain-1", "mirage-1", "naive-1", "plain-batch", "mirage-batch", "naive-batch"]
    models = load_models(args)
    results = run_variants(variants, args, models)
    if args.device == "cpu":
        for name in variants:  # one extra run each, after the timed ones, so sampling never slows a timing
            results[name]["peak_mb"] = rss_increase_mb(prepare_variant(name, args, models)[0])

    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"\nbench_generate  model={args.model or 'embedded tiny base'}  device={args.device} ({machine})  dtype={args.dtype}"
    )
    print(
        f"k={args.k}, a latent block every {args.block_every} tokens, {args.new_tokens} steps ({args.naive_tokens} for naive)\n"
    )
    memory = "peak MB" if args.device == "cuda" else "+RSS MB"
    header = f"{'variant':<14}{'batch':>6}{'steps':>7}{'pads':>7}{'tokens/s':>12}{memory:>10}"
    print(header)
    print("-" * len(header))
    for name in variants:
        r = results[name]
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        print(f"{name:<14}{r['batch']:>6}{r['steps']:>7}{r['latent_pads']:>7}{r['tokens_per_s']:>12.1f}{peak:>10}")
    tps = {name: results[name]["tokens_per_s"] for name in variants}
    print()
    print(f"mirage / plain, batch 1:            {tps['mirage-1'] / tps['plain-1']:.2f}x   (target >= 0.9)")
    print(
        f"mirage / plain, batch {args.batch}:           {tps['mirage-batch'] / tps['plain-batch']:.2f}x   (target >= 0.9)"
    )
    print(
        f"mirage batch {args.batch} / batch 1 throughput: {tps['mirage-batch'] / tps['mirage-1']:.2f}x   (target >= 6)"
    )
    print(f"plain batch {args.batch} / batch 1 throughput:  {tps['plain-batch'] / tps['plain-1']:.2f}x")
    print(f"mirage / naive no-cache, batch 1:   {tps['mirage-1'] / tps['naive-1']:.2f}x")
    print(f"mirage / naive no-cache, batch {args.batch}:  {tps['mirage-batch'] / tps['naive-batch']:.2f}x")


if __name__ == "__main__":
    main()
