"""The reproduction study: does imagery help a tiny model, and do its latents matter?

    python examples/reproduce.py --config examples/recipes/tiny/study.yaml            # = make reproduce
    python examples/reproduce.py --config examples/recipes/tiny/study.yaml --quick    # = make reproduce-quick

From the pretrained tiny base (`tiny-pretrained`, see `examples/pretrain_tiny_base.py`), with the same generated maps
and the same number of optimizer steps at the same batch size, it trains

- `direct`: answer-only SFT; `cot`: SFT on the templated reasoning (`<think>` ... `</think>`, the official CoT layout);
- `mirage`: stage 1 (helper-image targets, latent loss + γ·CE) then stage 2 (self-fed latent chain, CE);
- `mirage-no-stage1`: stage 2 only, no helper-image supervision; `mirage-no-stage2`: stage 1 only;
- ablations: `mirage-k2`, `mirage-k8` (k latent tokens), `mirage-gamma1` (γ = 1.0);
- `mirage-grpo`: `mirage`, then stage 3 (`trainers.MirageGRPOTrainer`, `grpo_steps` more steps on top of the equal
  SFT budget; see `grpo_stage`),

for each seed, and evaluates every model on the official 400-map planning test (by level) and on a generated held-out
set, with the latent interventions (zero, mean, noise, shuffle, oracle) and imagination retrieval for every Mirage
arm. Results go to `--output-dir` (one folder per run, `study.json`, figures) and, with `--write-docs`, into the
study's section of `docs/results.md` (mean ± std over seeds), with the exact command and machine.

`--quick`: one seed, the four main arms, fewer steps and 25 official maps per level: a check that runs in minutes.
Runs go in parallel over `--jobs` processes of one CPU thread each. GPU users: the same arms on Qwen2.5-VL-3B/7B are
`examples/sft_mirage.py` with `examples/recipes/qwen2.5-vl-7b/stage{1,2}.yaml` (`--variant direct|cot`,
`--latent_stage 2` for the single-stage arms), evaluated with `examples/evaluate_mirage.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "examples" / "recipes" / "tiny" / "study.yaml"
MAIN_ARMS = ("direct", "cot", "mirage", "mirage-no-stage1")


def study_runs(recipe: dict) -> list[tuple[str, int]]:
    """The `(arm, seed)` runs of a study, in the order they are started: every seed of `arms`, then every seed of
    `ablation_seeds` (default: `seeds`) of `ablations`."""
    runs = [(arm, seed) for seed in recipe["seeds"] for arm in recipe["arms"]]
    ablation_seeds = recipe.get("ablation_seeds") or recipe["seeds"]
    return runs + [(arm, seed) for seed in ablation_seeds for arm in recipe.get("ablations") or []]


DOCS_START, DOCS_END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"


def arm_plan(arm: str, recipe: dict) -> dict:
    """What an arm trains: its variant, k, γ and its stages as `(stage, steps, learning rate)`; same total steps."""
    s1, s2, total = recipe["stage1_steps"], recipe["stage2_steps"], recipe["stage1_steps"] + recipe["stage2_steps"]
    single = recipe["single_stage_learning_rate"]
    plan = {"variant": "mirage-direct", "k": recipe["latent_num_tokens"], "gamma": recipe["latent_text_weight"]}
    if arm in ("direct", "cot"):
        return plan | {"variant": arm, "stages": [(2, total, single)]}
    mirage_stages = [(1, s1, recipe["stage1_learning_rate"]), (2, s2, recipe["stage2_learning_rate"])]
    if arm in ("mirage", "mirage-grpo"):
        return plan | {"stages": mirage_stages, "grpo": arm == "mirage-grpo"}
    if arm == "mirage-no-stage1":
        return plan | {"stages": [(2, total, single)]}
    if arm == "mirage-no-stage2":
        return plan | {"stages": [(1, total, recipe["stage1_learning_rate"])]}
    if arm in ("mirage-k2", "mirage-k8"):
        return plan | {"k": int(arm[-1]), "stages": mirage_stages}
    if arm == "mirage-gamma1":
        return plan | {"gamma": 1.0, "stages": mirage_stages}
    raise SystemExit(f"unknown arm {arm!r}")


def grpo_stage(model, processor, recipe: dict, seed: int, exclude: list, output: Path):
    """Stage 3 of the `mirage-grpo` arm: `trainers.MirageGRPOTrainer` from the model stage 2 wrote, with the paper's
    settings as `MirageGRPOConfig` defaults them (reward 0.9 x accuracy + 0.1 x format, 5 rollouts per prompt, KL 0.01
    against that model), two prompts a step, on prompts of fresh
    maps of the training levels (seed `study-grpo-<seed>`, no official or held-out map). Returns the trained model and
    the trainer's log."""
    import mirage_tasks
    from trainers import MirageGRPOConfig, MirageGRPOTrainer, save_for_hub

    stage2 = output / "stage2-model"  # GRPO's reference model loads from a saved Mirage folder
    save_for_hub(model, processor, stage2)

    prompts = mirage_tasks.build_dataset(
        "vsp_planning", "mirage-direct", recipe["grpo_prompts"], levels=recipe["levels"], seed=f"study-grpo-{seed}",
        exclude=exclude,
    ).remove_columns(["completion", "helper_images"])  # fmt: skip
    args = MirageGRPOConfig(
        str(output / "grpo"), max_steps=recipe["grpo_steps"], learning_rate=recipe["grpo_learning_rate"],
        per_device_train_batch_size=2 * MirageGRPOConfig.num_generations, temperature=1.0,
        max_completion_length=recipe["max_new_tokens"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, logging_steps=max(1, recipe["grpo_steps"] // 10), save_strategy="no", report_to="none",
        seed=seed, use_cpu=True, bf16=False, activation_checkpointing=False, disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    trainer = MirageGRPOTrainer(model=str(stage2), args=args, train_dataset=prompts, processing_class=processor)
    trainer.train()
    return trainer.model, trainer.state.log_history


def heldout_rows(recipe: dict):
    """The generated held-out set: maps of `heldout_levels`, none of them an official test map (seed 'heldout')."""
    import mirage_tasks

    rows = mirage_tasks.build_dataset(
        "vsp_planning", "direct", recipe["heldout_examples"], levels=recipe["heldout_levels"], seed="heldout",
        exclude=mirage_tasks.official_test_maps(),
    )  # fmt: skip
    return rows


def train_and_evaluate(arm: str, seed: int, recipe: dict, output: Path) -> dict:
    """One run: train `arm` from the base with `seed`, evaluate it, write `output/run.json` and return it."""
    import torch

    import mirage_tasks
    from mirage_tasks.evaluation import EvaluationConfig, check_rows, evaluate, load_rows, write_outputs
    from trainers import MirageSFTConfig, MirageSFTTrainer, load_model_and_processor

    torch.set_num_threads(1)
    plan = arm_plan(arm, recipe)
    start = time.perf_counter()
    cpu_start = time.process_time()
    model, processor = load_model_and_processor(recipe["base"], plan["k"], image_scale=recipe["image_scale"])
    heldout = heldout_rows(recipe)
    exclude = mirage_tasks.official_test_maps() + list(heldout["map_desc"])
    # Every arm of a seed sees the same maps: the rows differ only in how the completion is laid out.
    train = mirage_tasks.build_dataset(
        "vsp_planning", plan["variant"], recipe["train_examples"], levels=recipe["levels"], seed=f"study-{seed}",
        exclude=exclude,
    )  # fmt: skip
    logs = []
    for index, (stage, steps, lr) in enumerate(plan["stages"]):
        args = MirageSFTConfig(
            str(output / f"stage{index + 1}"), latent_stage=stage, latent_text_weight=plan["gamma"], max_steps=steps,
            per_device_train_batch_size=recipe["batch_size"], learning_rate=lr, lr_scheduler_type="cosine",
            warmup_steps=10, weight_decay=0.01, logging_steps=max(1, steps // 10), save_strategy="no",
            report_to="none", seed=seed, use_cpu=True, bf16=False, activation_checkpointing=False,
            disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = MirageSFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
        trainer.train()
        logs.append({"stage": stage, "steps": steps, "log": trainer.state.log_history})
    if plan.get("grpo"):
        model, log = grpo_stage(model, processor, recipe, seed, exclude, output)
        logs.append({"stage": 3, "steps": recipe["grpo_steps"], "log": log})
    model.eval()
    mirage = plan["variant"].startswith("mirage")
    cot = plan["variant"] == "cot"
    config = EvaluationConfig(
        batch_size=16,
        max_new_tokens=recipe["cot_max_new_tokens"] if cot else recipe["max_new_tokens"],
        interventions=("zero", "mean", "noise", "shuffle", "oracle") if mirage else (),
        diagnostics=mirage,
    )
    official = load_rows("official", variant="cot" if cot else None)
    if recipe.get("official_per_level"):
        taken: dict[int, int] = {}
        official = [r for r in official if taken.setdefault(r["level"], 0) < recipe["official_per_level"]
                    and not taken.__setitem__(r["level"], taken[r["level"]] + 1)]  # fmt: skip
    results = {}
    for name, rows in (("official", official), ("heldout", check_rows(_prompted(heldout, plan["variant"])))):
        evaluation = evaluate(model, processor, rows, config, model_name=f"{arm}-seed{seed}")
        write_outputs(evaluation, output / f"eval-{name}", figures=False)
        results[name] = evaluation.results
    record = {
        "arm": arm,
        "seed": seed,
        "plan": {k: v for k, v in plan.items()},
        "train_logs": logs,
        "results": results,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    (output / "run.json").write_text(json.dumps(record, default=str))
    return record


def _prompted(rows, variant: str) -> list[dict]:
    """Held-out rows with the prompt of `variant` (the CoT arm is asked for reasoning, as it was trained)."""
    import mirage_tasks

    if variant != "cot":
        return [rows[i] for i in range(len(rows))]
    cot = mirage_tasks.build_dataset(
        "vsp_planning", "cot", len(rows), levels=sorted(set(rows["level"])), seed="heldout",
        exclude=mirage_tasks.official_test_maps(),
    )  # fmt: skip
    return [cot[i] for i in range(len(cot))]


# ------------------------------------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(records: list[dict]) -> dict:
    """Mean ± std over seeds per arm: success overall and per level (official, held-out), intervention costs and
    retrieval (Mirage arms), and the best constant answer."""
    table: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        runs = [r for r in records if r["arm"] == arm]
        entry: dict = {"seeds": [r["seed"] for r in runs]}
        for split in ("official", "heldout"):
            plain = [r["results"][split]["runs"]["plain"] for r in runs]
            entry[split] = {"all": _mean_std([p["success_rate"] for p in plain]), "n": plain[0]["n"]}
            for level in plain[0]["per_level"]:
                entry[split][level] = _mean_std([p["per_level"][level]["success_rate"] for p in plain])
            entry[split]["constant"] = runs[0]["results"][split]["baselines"]["best_constant_answer"]["success_rate"]
            names = [n for n in runs[0]["results"][split]["runs"] if n != "plain"]
            entry[split]["interventions"] = {
                n: _mean_std([r["results"][split]["runs"][n]["difference"]["value"] for r in runs]) for n in names
            }
            diagnostics = [r["results"][split].get("diagnostics") for r in runs]
            if all(diagnostics):
                entry[split]["retrieval_top1"] = _mean_std([d["retrieval"].get("top1", 0.0) for d in diagnostics])
                entry[split]["chance_top1"] = diagnostics[0]["retrieval"].get("chance_top1", 0.0)
                entry[split]["target_cosine"] = _mean_std(
                    [d["targets"]["cosine_across_problems"] or 0.0 for d in diagnostics]
                )
        entry["cpu_seconds"] = sum(r["cpu_seconds"] for r in runs)
        table[arm] = entry
    return table


def _pm(pair) -> str:
    mean, std = pair
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown(table: dict, command: str, machine: str, wall: float, recipe: dict) -> str:
    """The study's section of docs/results.md."""
    lines = [
        DOCS_START,
        "## Reproduction study on the pretrained tiny base",
        "",
        f"Written by `{command}` on {machine}; {wall / 60:.1f} min wall. Base `{recipe['base']}`, training maps levels "
        f"{recipe['levels']}, {recipe['train_examples']} rows, batch {recipe['batch_size']}, "
        f"{recipe['stage1_steps'] + recipe['stage2_steps']} steps per arm. Success rate in %, mean ± std over seeds "
        "(greedy decoding).",
        "",
    ]
    for split, title in (("official", "Official VSP planning test"), ("heldout", "Generated held-out maps")):
        arms = [a for a, e in table.items() if split in e]
        if not arms:
            continue
        levels = [lv for lv in table[arms[0]][split] if lv.isdigit()]
        lines += [
            f"### {title} ({table[arms[0]][split]['n']} maps)",
            "",
            "| arm | seeds | all | " + " | ".join(f"level {lv}" for lv in levels) + " |",
        ]
        lines.append("| --- | ---: | ---: |" + " ---: |" * len(levels))
        for arm in arms:
            e = table[arm]
            cells = " | ".join(_pm(e[split][lv]) for lv in levels)
            lines.append(f"| {arm} | {len(e['seeds'])} | {_pm(e[split]['all'])} | {cells} |")
        lines.append(f"| best constant answer (hindsight) | | {100 * table[arms[0]][split]['constant']:.1f} | |")
        lines += ["", "Latent interventions (points of success, mean ± std over seeds) and retrieval:", ""]
        lines += ["| arm | zero | mean | noise | shuffle | oracle | retrieval top-1 (chance) | target cosine |"]
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for arm in arms:
            e = table[arm][split]
            if not e["interventions"]:
                continue
            cells = " | ".join(
                _pm(e["interventions"].get(n, (0.0, 0.0))) for n in ("zero", "mean", "noise", "shuffle", "oracle")
            )
            ret = f"{_pm(e['retrieval_top1'])} ({100 * e['chance_top1']:.1f})" if "retrieval_top1" in e else ""
            cos = f"{e['target_cosine'][0]:.3f}" if "target_cosine" in e else ""
            lines.append(f"| {arm} | {cells} | {ret} | {cos} |")
        lines.append("")
    lines += [verdict(table), "", "![success by arm](figures/reproduce_success.png)", "", DOCS_END]
    return "\n".join(lines)


def verdict(table: dict) -> str:
    """What holds and what does not, against the issue's goal, from the official test's means and stds."""

    def get(arm):
        return table.get(arm, {}).get("official", {}).get("all")

    m, d, c = get("mirage"), get("direct"), get("cot")
    parts = []
    if m and d and c:
        sep = lambda a, b: a[0] - a[1] > b[0] + b[1]  # noqa: E731 - intervals of one std
        order = "Mirage > Direct > CoT" if sep(m, d) and sep(d, c) else "not Mirage > Direct > CoT"
        parts.append(
            f"Official test: Mirage {_pm(m)}, Direct {_pm(d)}, CoT {_pm(c)}: {order} with non-overlapping ±1 std "
            "intervals" + ("." if order.startswith("Mirage") else " (the goal does not hold).")
        )
    e = table.get("mirage", {}).get("official", {}).get("interventions", {})
    if e:
        worst = min(e["zero"][0], e["shuffle"][0])
        parts.append(
            f"Zeroing the Mirage latents changes success by {100 * e['zero'][0]:+.1f} points and shuffling them by "
            f"{100 * e['shuffle'][0]:+.1f}: the goal of at least -10 points "
            + (
                "holds."
                if e["zero"][0] <= -0.10 and e["shuffle"][0] <= -0.10
                else f"does not hold (larger cost {100 * worst:+.1f})."
            )
        )
    return " ".join(parts) or "Too few arms ran to compare."


def figure(table: dict, path: Path) -> None:
    """Bar chart of official success per level and overall, one bar group per arm, ±1 std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a, e in table.items() if "official" in e]
    if not arms:
        return
    keys = [lv for lv in table[arms[0]]["official"] if lv.isdigit()] + ["all"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        means = [100 * table[arm]["official"][k][0] for k in keys]
        stds = [100 * table[arm]["official"][k][1] for k in keys]
        ax.bar([j + i * width for j in range(len(keys))], means, width, yerr=stds, label=arm, capsize=2)
    ax.axhline(100 * table[arms[0]]["official"]["constant"], ls="--", c="k", lw=1, label="best constant answer")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], [f"level {k}" if k != "all" else k for k in keys])
    ax.set_ylabel("success on official test (%)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(section: str, docs: Path) -> None:
    """Replace the study's section of `docs` (between its markers), or append it."""
    text = docs.read_text() if docs.is_file() else "# Results\n"
    if DOCS_START in text and DOCS_END in text:
        head, rest = text.split(DOCS_START, 1)
        text = head + section + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    docs.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), help="the study recipe (YAML)")
    parser.add_argument("--output-dir", default="outputs/reproduce")
    parser.add_argument("--quick", action="store_true", help="one seed, the main arms, short runs, 100 official maps")
    parser.add_argument("--arms", default=None, help="comma-separated arms, no ablations (default: the recipe's)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds of every arm (default: the recipe's)")
    parser.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)), help="parallel runs")
    parser.add_argument("--write-docs", default="true", choices=["true", "false"], help="update docs/results.md")
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: `arm:seed`, one run in-process
    args = parser.parse_args()
    recipe = yaml.safe_load(Path(args.config).read_text())
    if args.quick:
        recipe.update(
            seeds=[0], arms=list(MAIN_ARMS), ablations=[], stage1_steps=recipe["stage1_steps"] // 2,
            stage2_steps=recipe["stage2_steps"] // 2, official_per_level=25, heldout_examples=64,
        )  # fmt: skip
    if args.arms:
        recipe["arms"], recipe["ablations"] = args.arms.split(","), []
    if args.seeds:
        recipe["seeds"] = recipe["ablation_seeds"] = [int(s) for s in args.seeds.split(",")]
    for arm, _ in study_runs(recipe):
        arm_plan(arm, recipe)  # unknown arms fail before anything runs
    output = Path(args.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.run:
        arm, seed = args.run.split(":")
        folder = output / f"{arm}-seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        record = train_and_evaluate(arm, int(seed), recipe, folder)
        (folder / "run.json").write_text(json.dumps(record, default=str))
        return

    start = time.perf_counter()
    (output / "recipe.json").write_text(json.dumps(recipe))
    queue = study_runs(recipe)
    running: list[tuple[subprocess.Popen, str]] = []
    base_cmd = [sys.executable, __file__, "--config", args.config, "--output-dir", str(output)]
    if args.quick:
        base_cmd.append("--quick")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while queue or running:
        while queue and len(running) < args.jobs:
            arm, seed = queue.pop(0)
            folder = output / f"{arm}-seed{seed}"
            if (folder / "run.json").is_file():  # resumable: finished runs are kept
                continue
            folder.mkdir(parents=True, exist_ok=True)
            log = open(folder / "log.txt", "w")
            print(f"start {arm} seed {seed}", flush=True)
            proc = subprocess.Popen(
                [*base_cmd, "--run", f"{arm}:{seed}"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
            running.append((proc, f"{arm}-seed{seed}"))
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"done {name} (exit {proc.returncode})", flush=True)
                if proc.returncode:
                    raise SystemExit(f"run {name} failed; see {output / name / 'log.txt'}")
    records = [json.loads((output / f"{arm}-seed{seed}" / "run.json").read_text()) for arm, seed in study_runs(recipe)]
    table = aggregate(records)
    wall = time.perf_counter() - start
    (output / "study.json").write_text(json.dumps({"recipe": recipe, "table": table, "wall_seconds": wall}))
    command = "python examples/reproduce.py" + (" --quick" if args.quick else "") + (
        f" --arms {args.arms}" if args.arms else "") + (f" --seeds {args.seeds}" if args.seeds else "")  # fmt: skip
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.jobs} parallel run(s) of one thread"
    section = markdown(table, command, machine, wall, recipe)
    print(section)
    figure(table, output / "reproduce_success.png")
    if args.write_docs == "true":
        figure(table, REPO / "docs" / "figures" / "reproduce_success.png")
        write_docs(section, REPO / "docs" / "results.md")


if __name__ == "__main__":
    main()
