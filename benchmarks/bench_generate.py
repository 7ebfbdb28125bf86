"""Generation speed: Mirage `generate` with latent blocks in every row vs plain Qwen2.5-VL `generate`, side by side.

In one run, on the same weights and the same prompts (a rendered VSP map and its prompt, left-padded batches):

* plain `Qwen2_5_VLForConditionalGeneration.generate` (stock class, the same weights, no latent tokens),
* Mirage `generate`, every row opening a latent block of k pads every `--block-every` tokens,
* a naive reference that recomputes the whole prefix at every step (no KV cache; what Coconut-style loops do),

at batch 1 and batch `--batch`, all running exactly `--new-tokens` decoding steps (EOS is suppressed in every
variant by the same logits processor, which also forces the block openings, so all pay the same processor cost).
Prints tokens/s, the Mirage/plain ratio at each batch size, the batch/1 throughput ratio and peak memory
(CUDA: `max_memory_allocated`; CPU: peak RSS of a child process running that variant alone).

    python benchmarks/bench_generate.py                       # embedded tiny base, CPU
    python benchmarks/bench_generate.py --model Qwen/Qwen2.5-VL-7B-Instruct --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
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
    from tasks import build_dataset

    rows = build_dataset("vsp_planning", "mirage-direct", n=batch, levels=(3, 4, 5, 6), seed=0)
    texts, images = [], []
    for row in rows:
        texts.append(processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True))
        image = row["images"][0]
        scale = 28 / 64  # one map cell = one merged 28-px token, as the tiny recipes train
        images.append(image.resize((round(image.width * scale), round(image.height * scale))))
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))


def load_models(args):
    if args.model is None:
        from trainers.tiny_base import tiny_base_path

        base = tiny_base_path()
    else:
        base = args.model
    dtype = getattr(torch, args.dtype)
    processor = MirageProcessor.from_base(base, latent_num_tokens=args.k)
    mirage = MirageForConditionalGeneration.from_base(base, processor=processor, dtype=dtype).to(args.device).eval()
    plain = Qwen2_5_VLForConditionalGeneration(mirage.config).to(dtype).to(args.device).eval()
    plain.load_state_dict(mirage.state_dict())  # same weights, stock class
    plain.generation_config = mirage.generation_config
    return processor, mirage, plain


def run_variant(name: str, args, models=None) -> dict:
    """Time one variant; returns tokens/s and peak memory (CUDA) for it."""
    processor, mirage, plain = models if models is not None else load_models(args)
    batch = args.batch if name.endswith("batch") else 1
    inputs = {k: v.to(args.device) for k, v in build_inputs(processor, batch).items()}
    prompt_length = inputs["input_ids"].shape[1]
    eos = mirage.generation_config.eos_token_id
    suppress = list(eos) if isinstance(eos, list) else [eos]
    model = plain if name.startswith("plain") else mirage
    token = (
        mirage.config.latent_start_token_id
        if not name.startswith("plain")
        else processor.tokenizer.convert_tokens_to_ids("R")
    )
    steps = args.new_tokens if not name.startswith("naive") else args.naive_tokens
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=not name.startswith("naive"))

    def once():
        processors = LogitsProcessorList([ForceEvery(token, args.block_every, prompt_length, suppress)])
        return model.generate(**inputs, logits_processor=processors, **kwargs)

    with torch.no_grad():
        once()  # warm-up
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        timings = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = once()
            if args.device == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
    new = out[:, prompt_length:]
    pads = int((new == mirage.config.latent_pad_token_id).sum())
    best = min(timings)
    result = {
        "variant": name,
        "batch": batch,
        "steps": new.shape[1],
        "tokens_per_s": batch * new.shape[1] / best,
        "seconds": best,
        "latent_pads": pads,
    }
    if args.device == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def child_peak_rss(name: str, args) -> float:
    """Peak resident memory (MB) of a child process that loads the models and runs one variant alone."""
    cmd = [sys.executable, __file__, "--child", name] + [a for a in sys.argv[1:] if a != "--child"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Qwen2.5-VL checkpoint; default: the embedded tiny base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="latent tokens per block")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--naive-tokens", type=int, default=48, help="steps for the (slow) no-cache reference")
    parser.add_argument("--block-every", type=int, default=16, help="open a latent block every N tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant CPU memory measurement")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    variants = ["plain-1", "mirage-1", "naive-1", "plain-batch", "mirage-batch", "naive-batch"]
    if args.child:
        args.repeats = 1
        run_variant(args.child, args)
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"peak_rss_mb": peak_kb / 1024}))
        return

    models = load_models(args)
    results = {}
    # interleave the variants over the repeats so drift in machine speed hits all of them alike
    for name in variants:
        results[name] = run_variant(name, args, models)
    if args.device == "cpu" and not args.no_memory:
        for name in variants:
            results[name]["peak_mb"] = child_peak_rss(name, args)

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
    header = f"{'variant':<14}{'batch':>6}{'steps':>7}{'pads':>7}{'tokens/s':>12}{'peak MB':>10}"
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
