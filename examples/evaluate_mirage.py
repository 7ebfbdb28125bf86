"""Score a model on VSP / jigsaw data and find out whether its latent tokens matter.

    python examples/evaluate_mirage.py --model outputs/demo/mirage-tiny-vsp --data official --output-dir outputs/eval
    python examples/evaluate_mirage.py --model DIR_OR_HUB_ID --data path/to/official.jsonl --output-dir OUT --limit 100
    python examples/evaluate_mirage.py --model DIR --data data/vsp_planning-mirage-direct --output-dir OUT \
        --num-samples 5 --temperature 0.7 --top-p 0.9

``--data`` is ``official`` (the official VSP planning test, shipped with the package), an official-format
``.jsonl`` file, or a dataset folder written by ``examples/make_dataset.py`` (its test split). The model is loaded as a
user loads it (``AutoModelForImageTextToText`` / ``AutoProcessor`` with ``trust_remote_code=True``): a Mirage
checkpoint, or a plain Qwen2.5-VL one (Direct / CoT baselines: no latent interventions then).

Writes ``results.json`` (rates overall and per level with 95 % intervals, each latent intervention with its change
from the plain run, latent diagnostics, the best constant answer), ``predictions.jsonl`` (one line per problem, run and
sample), PNG figures and ``summary.md``. See ``docs/evaluation.md`` for how to read them.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser


@dataclass
class EvaluateArguments:
    """Command-line options of ``evaluate_mirage.py``."""

    model: str = field(metadata={"help": "Model folder or Hub id (Mirage, or a plain Qwen2.5-VL checkpoint)."})
    output_dir: str = field(metadata={"help": "Folder for results.json, predictions.jsonl, figures, summary.md."})
    data: str = field(
        default="official",
        metadata={"help": "'official', an official-format .jsonl file, or a make_dataset.py folder (test split)."},
    )
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N problems only."})
    variant: str | None = field(
        default=None, metadata={"help": "For --data official: prompt variant (e.g. mirage-cot asks for <think>)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Problems per generation batch."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget per completion."})
    num_samples: int = field(default=1, metadata={"help": "Completions per problem; > 1 samples instead of greedy."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with --num-samples > 1)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (with --num-samples > 1)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, the noise intervention and the shuffle."})
    interventions: str = field(
        default="zero,mean,noise,shuffle,oracle",
        metadata={"help": "Comma-separated latent interventions to run, or 'none'."},
    )
    diagnostics: bool = field(default=True, metadata={"help": "Latent norms, similarities and retrieval."})
    figures: bool = field(default=True, metadata={"help": "Write PNG figures."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', ..."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: 'auto' (as saved), 'float32', 'bfloat16'."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)."})


def check_model_path(name: str) -> None:
    """Fail early, before any download or generation, when ``name`` looks like a local path that does not exist or
    is a folder without ``config.json``."""
    path = Path(name)
    looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or path.exists()
    if looks_local and not path.is_dir():
        raise SystemExit(f"--model {name!r}: no such folder (pass a model folder or a Hub id such as user/model)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise SystemExit(f"--model {name!r}: the folder has no config.json; is it a saved model folder?")


def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    check_model_path(args.model)

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mirage_tasks.evaluation import EvaluationConfig, evaluate, load_rows, summary_markdown, write_outputs

    interventions = () if args.interventions.strip() in ("", "none") else tuple(args.interventions.split(","))
    config = EvaluationConfig(
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, interventions=interventions,
        diagnostics=args.diagnostics,
    )  # fmt: skip
    rows = load_rows(args.data, limit=args.limit, variant=args.variant)  # bad rows fail here, before any model load
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=True, dtype=args.dtype)
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    print(f"{args.model}: {model.config.model_type}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
          f"on {device}; {len(rows)} problems from {args.data}", flush=True)  # fmt: skip

    start = time.perf_counter()
    evaluation = evaluate(model, processor, rows, config, model_name=args.model, data_name=args.data)
    seconds = time.perf_counter() - start
    generations = len(rows) * config.num_samples * len(evaluation.completions)
    evaluation.results["timing"] = {
        "seconds": seconds,
        "generations": generations,
        "seconds_per_problem": seconds / max(1, len(rows)),
        "device": device,
        "threads": torch.get_num_threads(),
    }
    out = write_outputs(evaluation, args.output_dir, figures=args.figures)
    print(summary_markdown(evaluation.results))
    print(
        f"{seconds:.0f} s ({seconds / max(1, len(rows)):.2f} s per problem, {generations} completions); outputs in {out}"
    )
    return evaluation


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(0 if main() is not None else 1)
