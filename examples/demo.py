"""Mirage end to end on the embedded tiny base, on a CPU, in a few minutes (`make demo`).

    python examples/demo.py --output-dir outputs/demo

1. load the shipped tiny Qwen2.5-VL base pretrained to read maps (`tiny-pretrained`; `--base tiny` for the random
   one) and convert it to Mirage (three latent token ids, k = 4 pads a block);
2. generate a VSP spatial-planning `mirage-direct` training set (no official test map in it);
3. stage 1: helper-image targets teacher-forced into the latent pads, latent cosine loss + 0.1 x CE;
4. stage 2: the pads filled by the model's own hidden-state chain, CE only;
5. evaluate (greedy) on a slice of the official test maps with `mirage_tasks.evaluation`, once as is and once per
   latent intervention (zeroed, mean, noise, shuffled, oracle), and show outputs with their latent block;
6. report the success rate (per level, 95 % interval) next to the untrained model and the best constant answer,
   what each intervention costs, and what the latents hold (similarity across maps, imagination retrieval);
7. save a Hub-ready folder (safetensors, processor, remote code, generation config, and a model card whose
   `model-index`, tables, figures and example outputs come from step 5's evaluation);
8. reload that folder in a fresh Python process outside the repository (`AutoModel`/`AutoProcessor` with
   `trust_remote_code=True`, offline) and check it generates the same outputs.

Training follows `examples/recipes/tiny/stage{1,2}.yaml` (steps and data size can be changed here). The model is a
million parameters trained for minutes on a CPU: compare its figures with the untrained, constant-answer and
intervention lines it prints, not with what Mirage gets on Qwen2.5-VL-7B.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

import mirage_tasks
from hub_cards import model_page_files, write_model_card
from mirage_tasks.evaluation import EvaluationConfig, evaluate, generate_completions, write_outputs
from trainers import MirageSFTConfig, MirageSFTTrainer, load_model_and_processor, save_for_hub
from trainers.hub import training_lineage

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "examples" / "recipes" / "tiny"

# Runs in a fresh interpreter whose working directory is outside the repository: only the saved folder (remote code
# included) defines the model there.
RELOAD_PROGRAM = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    folder, examples_file = sys.argv[1], sys.argv[2]
    examples = json.load(open(examples_file))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    processor.tokenizer.padding_side = "left"
    inputs = processor(
        text=[e["prompt"] for e in examples], images=[Image.open(e["image"]) for e in examples],
        padding=True, return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=examples[0]["max_new_tokens"], do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=False)
    print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "texts": texts}))
    """
)


def recipe_config(stage: int, output_dir: Path, **overrides) -> MirageSFTConfig:
    """The tiny recipe of `stage` as a MirageSFTConfig (script-only keys dropped), with `overrides`."""
    recipe = yaml.safe_load((RECIPES / f"stage{stage}.yaml").read_text())
    names = {f.name for f in dataclasses.fields(MirageSFTConfig)}
    kwargs = {key: value for key, value in recipe.items() if key in names}
    kwargs.update(output_dir=str(output_dir), use_cpu=True, bf16=False, **overrides)
    return MirageSFTConfig(**kwargs)


def first_last(trainer, key: str, window: int = 3) -> tuple[float, float]:
    """Mean of the first and of the last `window` logged values of `key` (nan when nothing was logged)."""
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    if not values:
        return float("nan"), float("nan")
    return sum(values[:window]) / len(values[:window]), sum(values[-window:]) / len(values[-window:])


def official_slice(root, per_level: int) -> list[dict]:
    """The first `per_level` official test maps of each level (3-6), in file order."""
    test = mirage_tasks.load_official_planning_test(root)
    taken, rows = collections.Counter(), []
    for index in range(len(test)):
        level = test[index]["level"]
        if taken[level] < per_level:
            taken[level] += 1
            rows.append(test[index])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument(
        "--official-data-root",
        default=None,
        help="an official data folder or test_direct.jsonl (default: $MIRAGE_OFFICIAL_DATA, else the copy shipped "
        "with mirage_tasks)",
    )
    parser.add_argument(
        "--base",
        default="tiny-pretrained",
        help="the Qwen2.5-VL base to convert: tiny-pretrained (the shipped tiny base that reads VSP maps, `make base`), "
        "tiny (the random one) or a folder",
    )
    parser.add_argument("--train-examples", type=int, default=4096)
    parser.add_argument("--levels", default="3-6", help="levels of the generated training maps")
    parser.add_argument("--stage1-steps", type=int, default=None, help="default: the tiny stage-1 recipe's")
    parser.add_argument("--stage2-steps", type=int, default=None, help="default: the tiny stage-2 recipe's")
    parser.add_argument("--eval-per-level", type=int, default=25, help="official test maps scored per level (3-6)")
    parser.add_argument("--examples", type=int, default=3, help="outputs shown and checked after reloading")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1 if (os.cpu_count() or 1) <= 2 else 0,
        help="torch threads (0: torch's default). One by default on <= 2 cores: the tiny model's many small ops "
        "stall badly with two threads as soon as anything else uses a core.",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows_table: list[tuple[str, float | None, str]] = []
    total_start = time.perf_counter()

    def step(title: str):
        print(f"\n=== {title} ===", flush=True)
        return time.perf_counter()

    # 1. Base and conversion ---------------------------------------------------------------------------------------
    start = step(f"1/8 load the tiny Qwen2.5-VL base ({args.base}) and convert it to Mirage")
    stage1_args = recipe_config(1, output / "stage1", disable_tqdm=False)
    if args.stage1_steps is not None:
        stage1_args.max_steps = args.stage1_steps
    # The recipe's image_scale becomes the processor's setting here, and is saved with it.
    model, processor = load_model_and_processor(
        args.base, stage1_args.latent_num_tokens, tiny_cache_dir=output / "cache", image_scale=stage1_args.image_scale
    )
    params = sum(p.numel() for p in model.parameters())
    ids = model.config.latent_token_ids
    rows_table.append(
        (f"load {args.base} + convert", time.perf_counter() - start,
         f"{params / 1e6:.2f} M params, k={model.config.latent_num_tokens}, latent ids {ids[0]}-{ids[2]}, "
         f"image scale {processor.image_scale}")
    )  # fmt: skip

    # 2. Data --------------------------------------------------------------------------------------------------------
    start = step("2/8 generate the VSP-planning training set")
    official = mirage_tasks.official_test_maps(args.official_data_root)
    train = mirage_tasks.build_dataset(
        "vsp_planning", "mirage-direct", args.train_examples, levels=args.levels, seed=0, exclude=official,
        progress=True,
    )  # fmt: skip
    official_keys = {mirage_tasks.map_key(m) for m in official}
    leaked = sum(mirage_tasks.map_key(m) in official_keys for m in train["map_desc"])
    rows_table.append(
        ("training data", time.perf_counter() - start,
         f"{len(train)} mirage-direct rows, levels {args.levels}, {leaked} official test maps among them")
    )  # fmt: skip

    start = time.perf_counter()
    eval_rows = official_slice(args.official_data_root, args.eval_per_level)
    before = generate_completions(model, processor, eval_rows, max_new_tokens=args.max_new_tokens, desc="untrained")
    before_score = mirage_tasks.evaluate_predictions(eval_rows, before.texts)["success_rate"]
    rows_table.append(
        ("score the untrained model", time.perf_counter() - start,
         f"{before_score:.0%} success on {len(eval_rows)} official test maps ({args.eval_per_level} per level 3-6)")
    )  # fmt: skip

    # 3. Stage 1 -----------------------------------------------------------------------------------------------------
    start = step(f"3/8 stage 1: teacher-forced latents, {stage1_args.max_steps} steps")
    trainer = MirageSFTTrainer(model=model, args=stage1_args, train_dataset=train, processing_class=processor)
    trainer.train()
    trainer.save_model()
    (l0, l1), (c0, c1), (z0, z1) = (first_last(trainer, key) for key in ("loss", "ce_loss", "latent_loss"))
    cosine = first_last(trainer, "latent_target_cosine")[1]
    rows_table.append(
        ("stage 1 (latent + 0.1 CE)", time.perf_counter() - start,
         f"loss {l0:.3f} -> {l1:.3f} (CE {c0:.2f} -> {c1:.2f}, latent {z0:.3f} -> {z1:.3f}); target cosine {cosine:.2f}"
         + (" (near 1: the random vision tower hardly tells helper images apart)" if cosine > 0.9 else ""))
    )  # fmt: skip

    # 4. Stage 2 -----------------------------------------------------------------------------------------------------
    stage2_args = recipe_config(2, output / "stage2", disable_tqdm=False)
    if args.stage2_steps is not None:
        stage2_args.max_steps = args.stage2_steps
    start = step(f"4/8 stage 2: self-filled latent chain, CE only, {stage2_args.max_steps} steps")
    trainer = MirageSFTTrainer(model=model, args=stage2_args, train_dataset=train, processing_class=processor)
    trainer.train()
    trainer.save_model()
    c0, c1 = first_last(trainer, "ce_loss")
    rows_table.append(("stage 2 (CE, latent chain)", time.perf_counter() - start, f"CE {c0:.3f} -> {c1:.3f}"))

    # 5-6. Evaluation on official maps, with latent interventions -----------------------------------------------------
    start = step(f"5/8 evaluate on {len(eval_rows)} official test maps (greedy), then with the latents intervened on")
    config = EvaluationConfig(max_new_tokens=args.max_new_tokens)
    evaluation = evaluate(model, processor, eval_rows, config, data_name="official")
    write_outputs(evaluation, output / "eval")
    results, texts = evaluation.results, evaluation.completions["plain"][0].texts
    plain, k = results["runs"]["plain"], model.config.latent_num_tokens
    with_block = sum(k * "<|latent_pad|>" in t for t in texts)
    rows_table.append(
        ("evaluate (plain + 5 interventions)", time.perf_counter() - start,
         f"{with_block}/{len(texts)} plain outputs open a latent block of {k} pads; {output / 'eval'}")
    )  # fmt: skip
    print("\nExample outputs (official test maps):")
    for row, text in list(zip(eval_rows, texts))[: args.examples]:
        print(f"  map {row['id']} (level {row['level']}, gold {row['answer']}): {text!r}")
        print(f"    -> {mirage_tasks.planning_outcome(text, row['map_desc'])}")

    start = step("6/8 success rate on the official slice, and whether the latents matter")
    constant = results["baselines"]["best_constant_answer"]
    per_level = ", ".join(f"{lvl}: {g['success_rate']:.0%}" for lvl, g in plain["per_level"].items())
    lo, hi = plain["ci95"]
    rows_table.append(
        ("success rate (official, greedy)", time.perf_counter() - start,
         f"{plain['success_rate']:.1%} [{lo:.0%}, {hi:.0%}] of {plain['n']} (levels {per_level}); invalid "
         f"{plain['invalid_rate']:.0%}; untrained {before_score:.0%}; best constant answer {constant['answer']!r} "
         f"{constant['success_rate']:.0%}")
    )  # fmt: skip
    for name in ("zero", "mean", "noise", "shuffle", "oracle"):
        run = results["runs"][name]
        d = run["difference"]
        rows_table.append(
            (f"  latents -> {name}", None,
             f"{run['success_rate']:.1%} ({100 * d['value']:+.1f} pts, 95% [{100 * d['ci95'][0]:+.1f}, "
             f"{100 * d['ci95'][1]:+.1f}])")
        )  # fmt: skip
    diagnostics = results["diagnostics"]
    retrieved = diagnostics["retrieval"]
    rows_table.append(
        ("  what the latents hold", None,
         f"cosine across maps: latents {diagnostics['latents']['cosine_across_problems'] or 0:.3f}, stage-1 targets "
         f"{diagnostics['targets']['cosine_across_problems'] or 0:.3f}; retrieval top-1 "
         f"{retrieved.get('top1', 0):.0%} (chance {retrieved.get('chance_top1', 0):.0%}), top-5 "
         f"{retrieved.get('top5', 0):.0%} (chance {retrieved.get('chance_top5', 0):.0%})")
    )  # fmt: skip

    # 7. Hub-ready folder --------------------------------------------------------------------------------------------
    start = step("7/8 save a Hub-ready folder")
    folder = save_for_hub(model, processor, output / "mirage-tiny-vsp")
    # The card: model-index and tables from the evaluation of step 5 (checked to belong to this model), its figures
    # and example outputs, the recipe both trainers recorded, and a usage snippet whose input is an official map.
    write_model_card(
        folder,
        results=output / "eval",
        example_row=eval_rows[0],
        repo_id="mirage-tiny-vsp-demo",
        base_model=(
            "embedded tiny Qwen2.5-VL base (random weights, built offline)"
            if args.base == "tiny"
            else f"embedded tiny Qwen2.5-VL base after stage-0 perception pretraining ({args.base})"
        ),
        training_stages=training_lineage(model)["stages"],
        datasets=[f"{len(train)} generated VSP spatial-planning rows (mirage-direct, levels {args.levels}, seed 0)"],
        notes="A demonstration of the training pipeline on a tiny model trained for minutes on a CPU, not a useful "
        "planner: compare it with the best constant answer, not with the paper's Qwen2.5-VL-7B results.",
    )
    page = model_page_files(folder)  # a complete page: exactly what a push would upload
    rows_table.append(
        ("save Hub-ready folder", time.perf_counter() - start,
         f"{folder} ({len(page)} page files, card with the results above; push with examples/update_model_card.py)")
    )  # fmt: skip

    # 8. Fresh-process reload ----------------------------------------------------------------------------------------
    start = step("8/8 reload in a fresh process (AutoModel, trust_remote_code, offline) and generate again")
    examples = []
    example_dir = output / "reload-examples"
    example_dir.mkdir(exist_ok=True)
    for i, row in enumerate(eval_rows[: args.examples]):
        path = example_dir / f"{i}.png"
        row["images"][0].save(path)  # as it comes: both processors resize it (the saved one by its own setting)
        prompt = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        examples.append({"prompt": prompt, "image": str(path), "max_new_tokens": args.max_new_tokens})
    (example_dir / "examples.json").write_text(json.dumps(examples))
    # The same inputs in this process, batched as the fresh process will batch them.
    processor.tokenizer.padding_side = "left"
    inputs = processor(
        text=[e["prompt"] for e in examples], images=[Image.open(e["image"]) for e in examples],
        padding=True, return_tensors="pt",
    )  # fmt: skip
    processor.tokenizer.padding_side = "right"
    with torch.no_grad():
        out = model.eval().generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    here = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    with tempfile.TemporaryDirectory() as outside:
        completed = subprocess.run(
            [sys.executable, "-c", RELOAD_PROGRAM, str(folder), str(example_dir / "examples.json")],
            cwd=outside, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if completed.returncode != 0:
        print(completed.stderr[-4000:])
        raise SystemExit("the fresh process could not load the saved folder")
    reloaded = json.loads(completed.stdout.strip().splitlines()[-1])
    same = sum(a == b for a, b in zip(here, reloaded["texts"]))
    print(f"  loaded class: {reloaded['class']}")
    for text in reloaded["texts"]:
        print(f"  fresh process: {text!r}")
    rows_table.append(
        ("reload in a fresh process", time.perf_counter() - start,
         f"{reloaded['class'].split('.')[0]}.*; same outputs {same}/{len(here)}")
    )  # fmt: skip

    total = time.perf_counter() - total_start
    width = max(len(name) for name, _, _ in rows_table)
    print(f"\nMirage demo on the embedded tiny base ({torch.get_num_threads()} CPU thread(s)), total {total:.0f} s")
    print(f"{'step':<{width}}  {'time':>7}  result")
    print("-" * (width + 90))
    for name, seconds, text in rows_table:
        print(f"{name:<{width}}  {'' if seconds is None else f'{seconds:>6.1f}s':>7}  {text}")
    print(f"\noutputs: {output}  (stage1/, stage2/, mirage-tiny-vsp/ = Hub-ready folder with README.md)")
    print(f"Honest note: a 1 M-parameter model ({args.base}) trained for minutes on a CPU; compare its success rate")
    print("with the untrained, constant-answer and intervention lines above, not with the paper's 7B results.")
    if same != len(here):
        raise SystemExit("the reloaded model generated different outputs")


if __name__ == "__main__":
    main()
