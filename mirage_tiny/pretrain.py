"""Stage 0: teach the tiny Qwen2.5-VL base to *see* VSP maps, before any Mirage training.

A random tiny base cannot show the method: its vision tower hardly tells helper images apart, so stage 1 has nothing
to teach. Training the tower through the planning objective does not fix that: the planning answer can be lowered
to its prior (answer `R`) without reading the image, and the tower then collapses into a constant bias (every merged
token of every image alike). Stage 0 therefore trains *perception only*, with objectives that cannot be solved
without reading the image:

- ``grid``: a map picture -> its grid as text, one row per line (``S F H`` ...: start, frozen, hole, goal);
- ``path``: a map with a path drawn as arrows (the planning helper image) -> the moves the arrows show. Half of the
  paths are shortest paths, half random walks, so the answer is read off the picture, not planned;
- ``locate``: a map picture -> where the start and the goal are (``S 1,3 G 3,1``: row, column, from 1 at the top
  left), the two cells a plan starts and ends at.

The shipped recipe trains ``path`` and ``locate``: a base that also copies the whole grid answers planning questions
from the image and lets its latents go unused (docs/results.md, "Stage 0").

Prompts are short (a few words), so the image tokens are a large share of each sequence; images are resized by
`image_scale` (0.4375 puts one 64-px map cell on one 28-px merged token), and map sizes follow a curriculum (3x3
first, larger ones later). While it trains it logs the teacher-forced exact-match accuracy of each task and the
**target diversity**: the mean pairwise cosine, across maps, of the stage-1 targets (k chunk means of the merged
vision features) of fixed helper images; near 1.0 the tower has collapsed.

Everything is seeded and runs on one CPU thread, so the same config gives the same weights on the same machine.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from modeling_mirage.processing_mirage import scale_image

from .base import build_tiny_base

__all__ = [
    "STAGE0_TASKS",
    "base_report",
    "cell_labels",
    "Stage0Config",
    "grid_text",
    "locate_text",
    "make_example",
    "parse_curriculum",
    "pretrain_tiny_base",
    "target_diversity",
]

STAGE0_TASKS = ("grid", "path", "locate")
"""The perception objectives of stage 0 (see the module docstring)."""

PROBE_CLASSES = (4, 5, 8, 8)
"""Classes of the cell probe's four read-outs: kind, outgoing arrow, row, column (maps up to 8x8)."""

_PROMPTS = {"grid": "Read the map.", "path": "Read the arrows.", "locate": "Find the start and the goal."}
_LETTERS = {0: "F", -1: "H", 1: "S", 2: "G"}  # the official map codes -> FrozenLake's letters


@dataclass
class Stage0Config:
    """Stage-0 (perception pretraining) settings; every field is a command-line flag of
    `examples/pretrain_tiny_base.py` and a key of its YAML recipe."""

    output_dir: str = field(
        default="mirage_tiny/pretrained", metadata={"help": "where the pretrained base is written"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the weights, the data and the order"})
    tasks: str = field(default="path,locate", metadata={"help": f"comma-separated perception tasks of {STAGE0_TASKS}"})
    curriculum: str = field(
        default="3:300,3-4:600,3-6:900",
        metadata={"help": "map sizes by phase: `levels:steps` pairs, e.g. `3:400,3-4:800` (levels as 3-6 or 3,5)"},
    )
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of the language model"})
    vision_learning_rate: float = field(default=2e-3, metadata={"help": "peak learning rate of the vision tower"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up steps; cosine decay to 10 % after"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    image_scale: float = field(default=0.4375, metadata={"help": "image resize (0.4375: one 28-px token per cell)"})
    latent_num_tokens: int = field(default=4, metadata={"help": "k of the monitored stage-1 targets"})
    cell_probe_weight: float = field(
        default=1.0,
        metadata={
            "help": "weight of the cell probe: a linear read-out of each merged vision token predicting its cell's kind, "
            "outgoing arrow, row and column, trained with the tower and discarded after (0: off)"
        },
    )
    log_every: int = field(default=100, metadata={"help": "steps between log lines (accuracy, target diversity)"})
    monitor_maps: int = field(default=32, metadata={"help": "fixed maps per level for accuracy and diversity"})
    threads: int = field(default=1, metadata={"help": "torch threads (1: deterministic and polite on shared cores)"})
    vision_depth: int = field(default=2, metadata={"help": "vision tower blocks"})
    vision_hidden_size: int = field(default=64, metadata={"help": "vision tower width"})
    hidden_size: int = field(default=128, metadata={"help": "language model width"})
    num_layers: int = field(default=4, metadata={"help": "language model layers"})
    intermediate_size: int = field(default=256, metadata={"help": "language model MLP width"})


def parse_curriculum(curriculum: str) -> list[tuple[tuple[int, ...], int]]:
    """`"3:400,3-4:800"` -> `[((3,), 400), ((3, 4), 800)]`; a clear error for a malformed phase."""
    phases = []
    for part in curriculum.replace(" ", "").split(","):
        levels, sep, steps = part.rpartition(":")
        try:
            if not sep:
                raise ValueError
            low, _, high = levels.partition("-")
            span = tuple(range(int(low), int(high or low) + 1))
            count = int(steps)
        except ValueError:
            raise ValueError(f"curriculum phase {part!r} is not `levels:steps` (e.g. `3-4:800`)") from None
        if not span or min(span) < 3 or max(span) > 8 or count <= 0:
            raise ValueError(f"curriculum phase {part!r}: levels must lie in 3-8 and steps be > 0")
        phases.append((span, count))
    return phases


def grid_text(map_desc) -> str:
    """The grid as the ``grid`` task writes it: one line per row, cells as ``S``/``F``/``H``/``G`` separated by spaces."""
    return "\n".join(" ".join(_LETTERS[int(v)] for v in row) for row in map_desc)


def locate_text(map_desc) -> str:
    """Where the start and the goal are, as the ``locate`` task writes it: ``S row,column G row,column``, 1-based."""
    from mirage_tasks.vsp import GOAL, START, find_cell

    grid = np.asarray(map_desc, dtype=np.int8)
    (sr, sc), (gr, gc) = find_cell(grid, START), find_cell(grid, GOAL)
    return f"S {sr + 1},{sc + 1} G {gr + 1},{gc + 1}"


def _random_walk(rng: random.Random, grid: np.ndarray) -> str:
    """A self-avoiding walk of 1-8 moves from the start that stays on the map, avoids holes and stops at the goal
    (self-avoiding, so every cell shows at most one outgoing arrow)."""
    from mirage_tasks.vsp import GOAL, HOLE, START, find_cell, step

    cell, moves = find_cell(grid, START), ""
    seen = {cell}
    for _ in range(rng.randint(1, 8)):
        options = [m for m in "LDRU" if step(grid, cell, m) not in seen and grid[step(grid, cell, m)] != HOLE]
        if not options:
            break
        move = rng.choice(options)
        cell, moves = step(grid, cell, move), moves + move
        seen.add(cell)
        if grid[cell] == GOAL:
            break
    return moves or "R"


def cell_labels(grid: np.ndarray, moves: str) -> torch.Tensor:
    """Per-cell labels of a picture, raster order, `(cells, 4)`: the cell's kind (0 ice, 1 hole, 2 start, 3 goal),
    the arrow leaving it (0 none, 1-4 = L D R U), its row and its column (from 0), for the cell probe on the vision
    tower's merged tokens (classes per column: `PROBE_CLASSES`)."""
    from mirage_tasks.vsp import START, find_cell, trace_plan

    kinds = {0: 0, -1: 1, 1: 2, 2: 3}
    rows, cols = grid.shape
    labels = torch.zeros(grid.size, 4, dtype=torch.long)
    labels[:, 0] = torch.tensor([kinds[int(v)] for v in grid.reshape(-1)])
    labels[:, 2] = torch.arange(rows).repeat_interleave(cols)
    labels[:, 3] = torch.arange(cols).repeat(rows)
    cell = find_cell(grid, START)
    for s in trace_plan(grid, moves):
        if s.blocked:
            continue
        labels[cell[0] * cols + cell[1], 1] = "LDRU".index(s.move) + 1
        cell = s.cell
    return labels


def make_example(
    rng: random.Random, task: str, level: int, exclude: set[str]
) -> tuple[object, str, str, torch.Tensor]:
    """One stage-0 example `(image, prompt, answer, cell labels)` on a fresh random map of side `level` (official
    test maps excluded); see [`cell_labels`]."""
    from mirage_tasks.vsp import draw_path, map_key, random_map, render_map, shortest_path

    while True:
        map_desc = random_map(rng, level)
        if map_key(map_desc) not in exclude:
            break
    grid = np.asarray(map_desc, dtype=np.int8)
    if task == "grid":
        return render_map(map_desc), _PROMPTS[task], grid_text(map_desc), cell_labels(grid, "")
    if task == "locate":
        return render_map(map_desc), _PROMPTS[task], locate_text(map_desc), cell_labels(grid, "")
    if task == "path":
        moves = shortest_path(grid) if rng.random() < 0.5 else _random_walk(rng, grid)
        return draw_path(grid, moves), _PROMPTS[task], moves, cell_labels(grid, moves)
    raise ValueError(f"unknown stage-0 task {task!r}; expected one of {STAGE0_TASKS}")


def _encode(processor, examples, image_scale: float) -> dict[str, torch.Tensor]:
    """Chat-formatted inputs with labels on the answer (and its closing `<|im_end|>`) only."""
    fulls, images = [], []
    for image, prompt, answer, _ in examples:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        fulls.append(text + answer + "<|im_end|>")
        images.append(scale_image(image, image_scale))
    processor.tokenizer.padding_side = "right"
    batch = processor(text=fulls, images=images, return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    # The answer starts after the last `<|im_start|>assistant\n` of the row (the generation prompt).
    tokenizer = processor.tokenizer
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    header = len(tokenizer("assistant\n")["input_ids"])
    for row in range(labels.shape[0]):
        last = (batch["input_ids"][row] == im_start).nonzero()[-1].item()
        labels[row, : last + 1 + header] = -100
    batch["labels"] = labels
    batch = dict(batch)
    batch["cell_labels"] = torch.cat([example[3] for example in examples])
    return batch


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("labels", "cell_labels")}


@torch.no_grad()
def _exact_match(model, batch) -> float:
    """Share of rows whose every answer token is the argmax under teacher forcing (= greedy decoding's output)."""
    logits = model(**_model_inputs(batch)).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ok = (logits.argmax(-1) == labels) | (labels == -100)
    return ok.all(dim=1).float().mean().item()


@torch.no_grad()
def target_diversity(model, processor, helper_images, k: int, image_scale: float | None) -> float:
    """Mean pairwise cosine across images of the stage-1 targets (k raster-chunk means of the merged vision features)
    of `helper_images`, all of one size; near 1.0 the vision tower does not tell them apart."""
    from trainers.sft_trainer import mean_pairwise_cosine

    inputs = processor.image_processor(
        images=[scale_image(im, image_scale) for im in helper_images], return_tensors="pt"
    )
    backbone = model.model
    features = backbone.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
    chunks = []
    for feature in features.pooler_output:  # (n_merged, hidden)
        usable = feature.shape[0] - feature.shape[0] % k
        chunks.append(feature[:usable].reshape(k, usable // k, -1).mean(dim=1))
    return mean_pairwise_cosine(torch.cat(chunks), k).item()


def _monitor_sets(cfg: Stage0Config, levels: tuple[int, ...], exclude: set[str]):
    """Fixed examples per (task, level) for accuracy and fixed level-4 helper images for diversity."""
    from mirage_tasks.vsp import draw_path, random_map, shortest_path

    rng = random.Random(10_000 + cfg.seed)
    sets = {
        (task, level): [make_example(rng, task, level, exclude) for _ in range(cfg.monitor_maps)]
        for task in cfg.tasks.split(",")
        for level in levels
    }
    helpers = []
    for _ in range(cfg.monitor_maps):
        grid = np.asarray(random_map(rng, 4), dtype=np.int8)
        helpers.append(draw_path(grid, shortest_path(grid)))
    return sets, helpers


def pretrain_tiny_base(cfg: Stage0Config, log=print) -> dict:
    """Build the random tiny base, train it on the stage-0 perception tasks, save it to `cfg.output_dir` (safetensors,
    tokenizer, processor) with `stage0_log.json`, and return that log."""
    import mirage_tasks

    tasks = cfg.tasks.split(",")
    unknown = [t for t in tasks if t not in STAGE0_TASKS]
    if unknown:
        raise ValueError(f"unknown stage-0 task(s) {unknown}; expected some of {STAGE0_TASKS}")
    phases = parse_curriculum(cfg.curriculum)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    output = Path(cfg.output_dir)
    start_time = time.process_time()
    wall_start = time.perf_counter()

    staging = output.parent / f".{output.name}.random"
    build_tiny_base(
        staging,
        seed=cfg.seed,
        overwrite=True,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        intermediate_size=cfg.intermediate_size,
        vision_depth=cfg.vision_depth,
        vision_hidden_size=cfg.vision_hidden_size,
    )
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(staging)
    processor = AutoProcessor.from_pretrained(staging)

    exclude = {mirage_tasks.map_key(m) for m in mirage_tasks.official_test_maps()}
    all_levels = tuple(sorted({level for span, _ in phases for level in span}))
    monitor, helpers = _monitor_sets(cfg, all_levels, exclude)
    monitor_batches = {key: _encode(processor, rows, cfg.image_scale) for key, rows in monitor.items()}

    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.") or n.startswith("visual.")]
    vision_ids = {id(p) for p in vision}
    text = [p for p in model.parameters() if id(p) not in vision_ids]
    # The cell probe reads each merged token on its own, so its loss can only fall if every token carries its own
    # cell: a tower that turns into a constant bias (the collapse seen when it learns through the answer alone)
    # cannot satisfy it. It is not part of the saved model.
    torch.manual_seed(cfg.seed)
    probe = torch.nn.Linear(cfg.hidden_size, sum(PROBE_CLASSES))
    captured = {}
    model.model.visual.register_forward_hook(lambda _m, _i, out: captured.__setitem__("merged", out.pooler_output))
    vision = vision + list(probe.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": text, "lr": cfg.learning_rate}, {"params": vision, "lr": cfg.vision_learning_rate}],
        weight_decay=cfg.weight_decay,
        betas=(0.9, 0.98),
    )
    peaks = [cfg.learning_rate, cfg.vision_learning_rate]
    total = sum(steps for _, steps in phases)

    def set_lr(step: int) -> None:
        if step < cfg.warmup_steps:
            factor = (step + 1) / cfg.warmup_steps
        else:
            progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
            factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
        for group, peak in zip(optimizer.param_groups, peaks, strict=True):
            group["lr"] = peak * factor

    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    history, probe_losses, probe_hits = [], [], []

    def evaluate(step: int, loss: float | None) -> None:
        model.eval()
        record = {"step": step, "loss": None if loss is None else round(loss, 4)}
        record["cpu_s"] = round(time.process_time() - start_time, 1)
        if probe_losses:
            record["probe_loss"] = round(sum(probe_losses) / len(probe_losses), 4)
            hits = torch.tensor(probe_hits).mean(dim=0).tolist()
            record["probe_accuracy"] = dict(zip(("kind", "arrow", "row", "column"), (round(h, 3) for h in hits)))
            probe_losses.clear()
            probe_hits.clear()
        record["target_cosine"] = round(
            target_diversity(model, processor, helpers, cfg.latent_num_tokens, cfg.image_scale), 4
        )
        for (task, level), batch in monitor_batches.items():
            record[f"{task}_L{level}"] = round(_exact_match(model, batch), 3)
        model.train()
        history.append(record)
        log(json.dumps(record))

    model.train()
    evaluate(0, None)
    step, running = 0, []
    for levels, steps in phases:
        for _ in range(steps):
            set_lr(step)
            # One map size per batch keeps padding small; sizes still mix across steps.
            level = rng.choice(levels)
            examples = [make_example(rng, rng.choice(tasks), level, exclude) for _ in range(cfg.batch_size)]
            batch = _encode(processor, examples, cfg.image_scale)
            loss = model(**_model_inputs(batch), labels=batch["labels"]).loss
            if cfg.cell_probe_weight:
                logits = probe(captured["merged"]).split(PROBE_CLASSES, dim=-1)  # raster order per image
                probe_loss = sum(
                    torch.nn.functional.cross_entropy(head, batch["cell_labels"][:, i])
                    for i, head in enumerate(logits)
                )
                probe_losses.append(probe_loss.item())
                probe_hits.append(
                    [
                        (head.argmax(-1) == batch["cell_labels"][:, i]).float().mean().item()
                        for i, head in enumerate(logits)
                    ]
                )
                loss = loss + cfg.cell_probe_weight * probe_loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            running.append(loss.item())
            step += 1
            if step % cfg.log_every == 0 or step == total:
                evaluate(step, sum(running) / len(running))
                running = []

    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    import shutil

    shutil.rmtree(staging, ignore_errors=True)
    result = {
        "config": asdict(cfg),
        "history": history,
        "cpu_seconds": round(time.process_time() - start_time, 1),
        "wall_seconds": round(time.perf_counter() - wall_start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    (output / "stage0_log.json").write_text(json.dumps(result, indent=1))
    return result


def base_report(folder: str | Path, *, maps_per_level: int = 64, seed: int = 123, image_scale: float = 0.4375) -> dict:
    """What a stage-0 base knows, measured on fresh maps (official test maps excluded) and on the official test:

    - `grid` / `path` / `locate`: per level 3-6, the share of maps whose grid text / arrow moves / start and goal cells
      it reads exactly (teacher-forced argmax of every answer token, which equals its greedy output);
    - `target_cosine`: mean pairwise cosine of the stage-1 targets (k = 4) of helper images of level-4 maps;
    - `planning`: its success on the official 400-map planning test (greedy, converted to Mirage with the same image
      resize, no training on planning) beside the best constant answer.
    """
    import mirage_tasks
    from mirage_tasks.evaluation import EvaluationConfig, evaluate, load_rows
    from mirage_tasks.vsp import draw_path, random_map, shortest_path
    from trainers.model_setup import load_model_and_processor

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    exclude = {mirage_tasks.map_key(m) for m in mirage_tasks.official_test_maps()}
    rng = random.Random(seed)
    report: dict = {task: {} for task in STAGE0_TASKS}
    for task in STAGE0_TASKS:
        for level in (3, 4, 5, 6):
            rows = [make_example(rng, task, level, exclude) for _ in range(maps_per_level)]
            report[task][str(level)] = round(_exact_match(model, _encode(processor, rows, image_scale)), 3)
    helpers = []
    for _ in range(maps_per_level):
        grid = np.asarray(random_map(rng, 4), dtype=np.int8)
        helpers.append(draw_path(grid, shortest_path(grid)))
    report["target_cosine"] = round(target_diversity(model, processor, helpers, 4, image_scale), 4)
    mirage, mirage_processor = load_model_and_processor(str(folder), 4, image_scale=image_scale)
    result = evaluate(
        mirage.eval(),
        mirage_processor,
        load_rows("official"),
        EvaluationConfig(batch_size=32, max_new_tokens=24, interventions=(), diagnostics=False),
    ).results
    plain = result["runs"]["plain"]
    report["planning"] = {
        "success_rate": plain["success_rate"],
        "per_level": {lv: g["success_rate"] for lv, g in plain["per_level"].items()},
        "invalid_rate": plain["invalid_rate"],
        "best_constant_answer": result["baselines"]["best_constant_answer"],
    }
    return report
