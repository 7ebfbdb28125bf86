"""Generation speed: Mirage `generate` with latent blocks in every row vs plain Qwen2.5-VL `generate`, side by side.

In one run, on the same weights and the same prompts (a rendered VSP map and its prompt, left-padded batches; or,
with `--text-size`, random token prompts of `--prompt-length`):

* plain `Qwen2_5_VLForConditionalGeneration.generate` (stock class, the same weights, no latent tokens),
* Mirage `generate`, every row opening a latent block of k pads every `--block-every` tokens,
* a naive reference that recomputes the whole prefix at every step (no KV cache; what Coconut-style loops do),

at batch 1 and batch `--batch`, all running exactly `--new-tokens` decoding steps (EOS is suppressed in every
variant by the same logits processor, which also forces the block openings, so all pay the same processor cost).
With `--static`, plain and Mirage also run with `cache_implementation="static"`, the cache transformers compiles the
decoding forward for (on a GPU by default; `--compile` compiles it on any device, the CPU included, which takes
minutes on a small CPU). Prints tokens/s, ms per decoding step against the memory-bandwidth limit of the device
(the bytes one step must read, weights and KV cache, over a bandwidth measured in-process with a large tensor copy),
the Mirage/plain ratio for each cache at each batch size, the batch/1 throughput ratio and peak memory (CUDA:
`max_memory_allocated`; CPU: growth of resident memory during one run, tiny base only).

    python benchmarks/bench_generate.py                       # embedded tiny base, CPU
    python benchmarks/bench_generate.py --static              # + static-cache variants
    python benchmarks/bench_generate.py --model Qwen/Qwen2.5-VL-7B-Instruct --device cuda --dtype bfloat16 --static
    python benchmarks/bench_generate.py --text-size 3b --device cuda --dtype bfloat16 --static  # random weights
    python benchmarks/bench_generate.py --text-size 3b --layers 2 --prompt-length 64 --new-tokens 32 \
        --block-every 8 --naive-tokens 0 --static                                           # a CPU-sized cut
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import torch
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList, Qwen2_5_VLForConditionalGeneration

from modeling_mirage import MirageForConditionalGeneration, MirageProcessor


class ForceEvery(LogitsProcessor):
    """Suppresses the end tokens and forces `token` every `every` steps (counted from the first generated token)."""

    def __init__(self, token: int | None, every: int, prompt_length: int, suppress: list[int]):
        self.token, self.every, self.prompt_length = token, every, prompt_length
        self.suppress = torch.tensor(suppress)
        self.suppress_on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, input_ids, scores):
        # A device index made once: indexing with a Python list would copy it to the GPU, and wait, at every step.
        suppress = self.suppress_on.setdefault(scores.device, self.suppress.to(scores.device))
        scores.index_fill_(1, suppress, float("-inf"))
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


# Text dimensions of Qwen2.5-VL-3B/7B-Instruct (their config.json), for random-weight models of a real width.
TEXT_SIZES = {
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
}
QWEN_VOCAB, QWEN_EOS, QWEN_PAD = 151936, [151645, 151643], 151643


def sized_config(size: str, layers: int | None):
    """A Mirage config with the text dimensions of Qwen2.5-VL-`size` (optionally fewer layers) and a 1-block vision
    tower (the prompts are text only): random weights, nothing downloaded."""
    from modeling_mirage import MirageConfig

    text = dict(TEXT_SIZES[size], vocab_size=QWEN_VOCAB, max_position_embeddings=32768, eos_token_id=QWEN_EOS)
    text.update(
        pad_token_id=QWEN_PAD,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    tie = text.pop("tie_word_embeddings")
    if layers is not None:
        text["num_hidden_layers"] = layers
    vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=text["hidden_size"])
    return MirageConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie)


def load_models(args):
    """`(processor or None, mirage, plain)`: the same weights in both classes (plain shares Mirage's tensors)."""
    dtype = getattr(torch, args.dtype)
    if args.text_size is not None:
        processor = None
        torch.manual_seed(0)
        with torch.device(args.device):
            mirage = MirageForConditionalGeneration(sized_config(args.text_size, args.layers)).to(dtype).eval()
        mirage.generation_config.eos_token_id, mirage.generation_config.pad_token_id = QWEN_EOS, QWEN_PAD
    else:
        if args.model is None:
            from mirage_tiny import tiny_base_path

            base = tiny_base_path()
        else:
            base = args.model
        processor = MirageProcessor.from_base(base, latent_num_tokens=args.k, image_scale=args.image_scale)
        mirage = MirageForConditionalGeneration.from_base(base, processor=processor, dtype=dtype)
        mirage = mirage.to(args.device).eval()
    mirage.config.latent_num_tokens = args.k
    with torch.device("meta"):
        plain = Qwen2_5_VLForConditionalGeneration(mirage.config)
    plain.load_state_dict(mirage.state_dict(), assign=True)  # same tensors, stock class
    for name, buffer in mirage.named_buffers():  # the non-persistent ones (rotary frequencies) are no state
        module, _, leaf = name.rpartition(".")
        plain.get_submodule(module)._buffers[leaf] = buffer
    plain.tie_weights()
    plain.eval()
    plain.generation_config = mirage.generation_config
    return processor, mirage, plain


def random_inputs(batch: int, length: int, device) -> dict:
    """Random text prompts (token ids clear of the special ones), all of one length."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 150000, (batch, length), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def prepare_variant(name: str, args, models):
    """`(generate-once callable, batch, prompt length)` for one variant, named `<plain|mirage|naive>-<dynamic|static>-<1|batch>`."""
    processor, mirage, plain = models
    kind, cache, size = name.split("-")
    batch = args.batch if size == "batch" else 1
    if processor is None:
        inputs = random_inputs(batch, args.prompt_length, args.device)
    else:
        inputs = {k: v.to(args.device) for k, v in build_inputs(processor, batch).items()}
    prompt_length = inputs["input_ids"].shape[1]
    eos = mirage.generation_config.eos_token_id
    suppress = list(eos) if isinstance(eos, list) else [eos]
    model = plain if kind == "plain" else mirage
    # plain forces an ordinary token where Mirage opens a block, so both pay the same processor cost
    if kind == "plain":
        token = processor.tokenizer.convert_tokens_to_ids("R") if processor is not None else 1000
    else:
        token = mirage.config.latent_start_token_id
    steps = args.naive_tokens if kind == "naive" else args.new_tokens
    kwargs = dict(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, use_cache=kind != "naive")
    if cache == "static":
        kwargs["cache_implementation"] = "static"
        if args.compile:
            config = CompileConfig()
            config._compile_all_devices = True  # transformers compiles on GPUs only unless told
            kwargs["compile_config"] = config

    @torch.no_grad()
    def once():
        processors = LogitsProcessorList([ForceEvery(token, args.block_every, prompt_length, suppress)])
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(**inputs, logits_processor=processors, **kwargs)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out[:, prompt_length:]

    return once, batch, prompt_length


def bandwidth_gb_s(device: str, megabytes: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth (GB/s) measured in-process: the best of `repeats` copies of a `megabytes` tensor, counting
    the bytes read and written. A copy is the simplest memory-bound kernel; on a GPU it reaches most of the peak."""
    n = megabytes * 2**20 // 4
    source, target = torch.ones(n, device=device), torch.empty(n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n * 4 / best / 1e9


def bytes_per_step(model, batch: int, context: int) -> int:
    """What one decoding step must read at the least: the text model's weights (the embedding table only where the
    LM head shares it) and the KV cache of `context` positions for `batch` rows."""
    text = model.config.text_config
    embedding = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "visual" not in n)
    if model.lm_head.weight is not embedding:
        weights -= embedding.numel() * embedding.element_size()  # a lookup reads a few rows of it, not all
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * context * batch * embedding.element_size()
    return weights + kv


def run_variants(names: list[str], args, models) -> dict:
    """Time the variants round-robin (so drifts in machine speed hit all alike); best of `--repeats` each."""
    prepared = {name: prepare_variant(name, args, models) for name in names}
    results = {}
    for once, _, _ in prepared.values():  # warm-up (and, for a compiled forward, compilation)
        once()
    for repeat in range(args.repeats):
        for name, (once, batch, prompt_length) in prepared.items():
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
                    "prompt_length": prompt_length,
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
    parser.add_argument(
        "--text-size",
        choices=sorted(TEXT_SIZES),
        default=None,
        help="random weights with the text dimensions of Qwen2.5-VL-3B/7B (no checkpoint; text-only prompts)",
    )
    parser.add_argument("--layers", type=int, default=None, help="with --text-size: fewer decoder layers")
    parser.add_argument("--prompt-length", type=int, default=256, help="with --text-size: prompt tokens per row")
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
    parser.add_argument(
        "--naive-tokens", type=int, default=24, help="steps for the (slow) no-cache reference; 0: none"
    )
    parser.add_argument("--block-every", type=int, default=16, help="open a latent block every N tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--static", action="store_true", help="also run plain and Mirage with a static cache")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the static-cache decoding forward on any device (transformers does on GPUs by itself)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    args = parser.parse_args()
    if args.model is not None and args.text_size is not None:
        parser.error("pass --model or --text-size, not both")
    if args.layers is not None and args.text_size is None:
        parser.error("--layers needs --text-size")
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))

    caches = ["dynamic", "static"] if args.static else ["dynamic"]
    kinds = ["plain", "mirage"] + (["naive"] if args.naive_tokens > 0 else [])
    variants = [
        f"{kind}-{cache}-{size}"
        for size in ("1", "batch")
        for cache in caches
        for kind in kinds
        if not (kind == "naive" and cache == "static")
    ]
    models = load_models(args)
    results = run_variants(variants, args, models)
    if args.device == "cpu" and args.text_size is None:
        for name in variants:  # one extra run each, after the timed ones, so sampling never slows a timing
            results[name]["peak_mb"] = rss_increase_mb(prepare_variant(name, args, models)[0])
    bandwidth = bandwidth_gb_s(args.device)

    machine = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    )
    mirage = models[1]
    text = mirage.config.text_config
    described = args.model or (
        f"random, Qwen2.5-VL-{args.text_size.upper()} text width, {text.num_hidden_layers} layers"
        if args.text_size
        else "embedded tiny base"
    )
    print(f"\nbench_generate  model={described}  device={args.device} ({machine})  dtype={args.dtype}")
    print(
        f"k={args.k}, a latent block every {args.block_every} tokens, {args.new_tokens} steps "
        f"({args.naive_tokens} for naive); memory bandwidth {bandwidth:.0f} GB/s (in-process copy, measured now)\n"
    )
    memory = "peak MB" if args.device == "cuda" else "+RSS MB"
    header = (
        f"{'variant':<22}{'batch':>6}{'steps':>7}{'pads':>7}{'tokens/s':>12}{'ms/step':>10}"
        f"{'limit ms':>10}{'x limit':>9}{memory:>10}"
    )
    print(header)
    print("-" * len(header))
    for name in variants:
        r = results[name]
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        prompt = r["prompt_length"]
        limit = bytes_per_step(mirage, r["batch"], prompt + r["steps"] // 2) / (bandwidth * 1e9) * 1e3
        step = r["seconds"] / r["steps"] * 1e3
        print(
            f"{name:<22}{r['batch']:>6}{r['steps']:>7}{r['latent_pads']:>7}{r['tokens_per_s']:>12.1f}"
            f"{step:>10.2f}{limit:>10.2f}{step / limit:>9.1f}{peak:>10}"
        )
    print("(limit: the weights and the KV cache read once per step at the measured bandwidth; x limit: how far above)")
    tps = {name: results[name]["tokens_per_s"] for name in variants}
    print()
    for cache in caches:
        target = "0.95" if cache == "static" else "0.9"
        for size, label in (("1", "1"), ("batch", str(args.batch))):
            ratio = tps[f"mirage-{cache}-{size}"] / tps[f"plain-{cache}-{size}"]
            print(f"mirage / plain, {cache:<7} cache, batch {label:<3}: {ratio:.2f}x   (target >= {target})")
    for cache in caches:
        print(
            f"mirage batch {args.batch} / batch 1 throughput, {cache} cache: "
            f"{tps[f'mirage-{cache}-batch'] / tps[f'mirage-{cache}-1']:.2f}x   (plain: "
            f"{tps[f'plain-{cache}-batch'] / tps[f'plain-{cache}-1']:.2f}x)"
        )
    if "naive" in kinds:
        print(f"mirage / naive no-cache, batch 1:   {tps['mirage-dynamic-1'] / tps['naive-dynamic-1']:.2f}x")
        print(
            f"mirage / naive no-cache, batch {args.batch}:  {tps['mirage-dynamic-batch'] / tps['naive-dynamic-batch']:.2f}x"
        )
    if args.static and args.device == "cpu" and not args.compile:
        print("(static cache on the CPU without --compile: transformers compiles the decoding forward on GPUs only)")


if __name__ == "__main__":
    main()
