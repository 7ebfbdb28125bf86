"""Evaluate a model on task rows, and find out whether its latent tokens matter.

The runner generates a completion for every row (batched, left-padded, greedy by default), scores it with the task
verifiers, and -- for a Mirage model -- generates again with the latents replaced at generation time, so the text
after each latent block reacts to what was fed:

* ``zero``: every latent vector replaced by zeros;
* ``mean``: by the mean latent over the data at the same slot (block, pad) of the unmodified run;
* ``noise``: by Gaussian noise rescaled to the norm of the vector it replaces;
* ``shuffle``: by another problem's latents at the same slot (a derangement of the problems);
* ``oracle``: by the stage-1 targets of the problem's own helper image (where the row has one; VSP planning rows
  without one get the helper image training data draws: the map with its shortest path).

It also measures what the latents hold (:func:`latent_diagnostics`): their norms against token embeddings and
stage-1 targets, how alike they are across problems and within a block next to the same figures for the targets
(a vision tower that cannot tell helper images apart makes "all latents alike" a property of the encoder, not of
the method), and **imagination retrieval**: for each problem, the helper images of all problems ranked by cosine
between its latents and their stage-1 targets; top-1 / top-5 accuracy of finding its own, against chance.

Typical use::

    from mirage_tasks.evaluation import EvaluationConfig, evaluate, load_rows, write_outputs

    rows = load_rows("official", limit=40)
    result = evaluate(model, processor, rows, EvaluationConfig(batch_size=16, max_new_tokens=64))
    write_outputs(result, "outputs/eval")  # results.json, predictions.jsonl, figures, summary.md

``examples/evaluate_mirage.py`` wraps this as a command; ``docs/evaluation.md`` explains how to read its outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .dataset import TASKS
from .errors import TaskDataError, UnknownNameError
from .verifiers import extract_boxed, score_row

INTERVENTIONS = ("zero", "mean", "noise", "shuffle", "oracle")
"""The latent interventions, in the order they are run and reported."""

PLAIN = "plain"
"""Name of the unmodified run."""

Z95 = 1.959963984540054
"""Two-sided 95 % normal quantile."""

LatentSource = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""`generate(..., latent_source=f)`: `f(hidden (B, D), block (B,), pad (B,)) -> (B, D)` vectors to feed at pads."""


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------
def load_rows(data: str | os.PathLike, *, limit: int | None = None, variant: str | None = None) -> list[dict]:
    """Canonical rows to evaluate on.

    Args:
        data: ``"official"`` (the official VSP planning test shipped with the package), an official-format
            ``.jsonl`` file (images resolved as :func:`~mirage_tasks.read_official_jsonl` does), or a dataset folder
            written by ``examples/make_dataset.py`` (its ``test`` split).
        limit: keep the first ``limit`` rows.
        variant: for ``"official"``, the prompt variant (a reasoning variant asks for ``<think>`` reasoning).

    Raises:
        FileNotFoundError: ``data`` is neither ``"official"`` nor an existing file or folder.
        TaskDataError: a row is malformed (names its line and field).
    """
    from .official import load_official_planning_test, read_official_jsonl

    if str(data) == "official":
        dataset = load_official_planning_test(variant=variant or "direct")
    else:
        path = Path(data)
        if path.is_file():
            dataset = read_official_jsonl(path)
        elif path.is_dir():
            import datasets

            try:
                dataset = datasets.load_dataset(str(path), split="test")
            except ValueError as error:  # no test split
                raise TaskDataError(f"dataset folder {path} has no 'test' split ({error})") from error
        else:
            raise FileNotFoundError(
                f"--data {str(data)!r}: no such file or folder; pass 'official', an official-format .jsonl file or a "
                "dataset folder written by examples/make_dataset.py"
            )
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return check_rows([dataset[i] for i in range(len(dataset))])


def check_rows(rows: Sequence[dict]) -> list[dict]:
    """``rows`` as a list, after checking that each has a known task and an input image (before any generation)."""
    rows = list(rows)
    for position, row in enumerate(rows):
        if row.get("task") not in TASKS:
            raise UnknownNameError(
                f"row {position} ({row.get('id')!r}): unknown task {row.get('task')!r}; known: {TASKS}"
            )
        if not row.get("images"):
            raise TaskDataError("the row has no input image", row=row.get("id", position), field="images")
    return rows


def helper_images(row: dict) -> list:
    """The helper images of a row: its own, or for a VSP planning row without any, the map with its shortest path
    drawn (what the generated training data shows)."""
    if row.get("helper_images"):
        return list(row["helper_images"])
    if row["task"] == "vsp_planning":
        from .vsp_planning import sample_from_map

        return [sample_from_map(row["map_desc"]).helper()]
    return []


def problem_key(row: dict) -> Any:
    """What a prediction line carries to be re-scored independently: the map (VSP) or the answer letter."""
    return (
        row["map_desc"] if row["task"] in ("vsp_planning", "vsp_reasoning") and row.get("map_desc") else row["answer"]
    )


# ---------------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------------
def is_mirage(model) -> bool:
    """Whether ``model`` is a Mirage model (by ``config.model_type``: remote-code classes are other objects)."""
    return getattr(model.config, "model_type", None) == "mirage"


def _end_strings(model, tokenizer) -> list[str]:
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return [tokenizer.convert_ids_to_tokens(i) for i in eos]


def clean_completion(text: str, end_strings: Sequence[str], pad_string: str | None) -> str:
    """A decoded completion cut at its first end-of-turn string, with padding removed (latent blocks kept)."""
    if pad_string:
        text = text.replace(pad_string, "")
    cut = min((text.find(s) for s in end_strings if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@dataclass
class Completions:
    """One generation run over the rows: texts (special tokens kept), and per row the latents fed, in order."""

    texts: list[str]
    latents: list[torch.Tensor]


def generate_completions(
    model,
    processor,
    rows: Sequence[dict],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 512,
    do_sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    source_for: Callable[[list[int]], LatentSource | None] | None = None,
    desc: str | None = None,
    generation_kwargs: dict[str, Any] | None = None,
) -> Completions:
    """Generate a completion for every row, batched and left-padded.

    Args:
        source_for: given the row indices of a batch, the latent source to feed that batch (None: the model's own
            hidden states). Only for Mirage models.
        seed: seeds torch before every batch, so a run is reproducible for a given batch size.
        generation_kwargs: more arguments for `generate` (e.g. `logits_processor`, `repetition_penalty`).
    """
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    ends, pad = _end_strings(model, tokenizer), tokenizer.pad_token
    mirage = is_mirage(model)
    device = next(model.parameters()).device
    texts: list[str] = []
    latents: list[torch.Tensor] = []
    model.eval()
    try:
        batches = range(0, len(rows), batch_size)
        for start in tqdm(batches, desc=desc, unit="batch", disable=desc is None):
            indices = list(range(start, min(start + batch_size, len(rows))))
            prompts = [
                processor.apply_chat_template(rows[i]["prompt"], tokenize=False, add_generation_prompt=True)
                for i in indices
            ]
            images = [image for i in indices for image in rows[i]["images"]]
            inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt").to(device)
            kwargs: dict[str, Any] = dict(generation_kwargs or {}, max_new_tokens=max_new_tokens, do_sample=do_sample)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            if mirage:
                kwargs["return_dict_in_generate"] = True
                source = source_for(indices) if source_for is not None else None
                if source is not None:
                    kwargs["latent_source"] = source
            torch.manual_seed(seed + start)
            with torch.no_grad():
                out = model.generate(**inputs, **kwargs)
            sequences = out.sequences if mirage else out
            prompt_length = inputs["input_ids"].shape[1]
            decoded = processor.batch_decode(sequences[:, prompt_length:], skip_special_tokens=False)
            texts += [clean_completion(text, ends, pad) for text in decoded]
            if mirage:
                latents += [row_latents.float().cpu() for row_latents in out.latents]
            else:
                latents += [torch.zeros(0, 0) for _ in indices]
    finally:
        tokenizer.padding_side = side
    return Completions(texts, latents)


# ---------------------------------------------------------------------------------------------------------
# Interventions
# ---------------------------------------------------------------------------------------------------------
def _slot_of(latents: torch.Tensor, k: int) -> dict[tuple[int, int], torch.Tensor]:
    """A row's generated latents by slot (block, pad), for blocks of ``k`` pads."""
    return {(index // k, index % k): vector for index, vector in enumerate(latents)}


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` with no fixed point (identity for n < 2), seeded."""
    if n < 2:
        return list(range(n))
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


class SlotSource:
    """A latent source that feeds, at slot (block, pad) of batch row r, ``table[r].get((block, pad))``, falling back
    to ``fallback(hidden_r)`` (default: the model's own hidden state) where the table has no vector."""

    def __init__(self, table: list[dict[tuple[int, int], torch.Tensor]], fallback=None):
        self.table, self.fallback = table, fallback

    def __call__(self, hidden: torch.Tensor, block: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        for r, (b, p) in enumerate(zip(block.tolist(), pad.tolist())):
            vector = self.table[r].get((b, p))
            if vector is not None:
                out[r] = vector.to(out.device, out.dtype)
            elif self.fallback is not None:
                out[r] = self.fallback(hidden[r])
        return out


def zero_source(hidden: torch.Tensor, block: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The ``zero`` intervention: feed zeros at every latent pad."""
    return torch.zeros_like(hidden)


class NoiseSource:
    """The ``noise`` intervention: Gaussian noise rescaled to the norm of the vector it replaces, seeded."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, hidden: torch.Tensor, block: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(hidden.shape, generator=self.generator, dtype=torch.float32).to(hidden.device)
        noise = noise / noise.norm(dim=-1, keepdim=True) * hidden.float().norm(dim=-1, keepdim=True)
        return noise.to(hidden.dtype)


def stage1_targets(model, processor, rows: Sequence[dict], batch_size: int = 16) -> list[torch.Tensor | None]:
    """Per row, the stage-1 targets of its helper images, ``(n_helpers, k, D)`` (None where a row has none)."""
    backbone = model.model
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        helpers = [helper_images(row) for row in chunk]
        flat = [image for images in helpers for image in images]
        if not flat:
            out += [None] * len(chunk)
            continue
        pixels = processor.process_helper_images(flat).to(device)  # resized as training resized them
        with torch.no_grad():
            targets = backbone.latent_targets_from_images(
                pixels["helper_pixel_values"], pixels["helper_image_grid_thw"]
            )
        targets = torch.stack(targets).float().cpu()  # (n_images, k, D)
        offset = 0
        for images in helpers:
            out.append(targets[offset : offset + len(images)] if images else None)
            offset += len(images)
    return out


def intervention_sources(
    name: str,
    plain: Completions,
    k: int,
    seed: int,
    targets: list[torch.Tensor | None] | None = None,
) -> Callable[[list[int]], LatentSource | None]:
    """``source_for(batch_indices)`` for the named intervention (see the module docstring)."""
    if name == "zero":
        return lambda indices: zero_source
    if name == "noise":
        noise = NoiseSource(seed)
        return lambda indices: noise
    slots = [_slot_of(latents, k) for latents in plain.latents]
    if name == "mean":
        sums: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
        for row in slots:
            for slot, vector in row.items():
                sums[slot].append(vector)
        means = {slot: torch.stack(vectors).mean(dim=0) for slot, vectors in sums.items()}
        overall = torch.cat([latents for latents in plain.latents if latents.numel()]).mean(dim=0) if means else None
        return lambda indices: SlotSource([means] * len(indices), (lambda h: overall.to(h)) if means else None)
    if name == "shuffle":
        donors = [i for i, row in enumerate(slots) if row]
        order = derangement(len(donors), seed)
        donor_of = {donors[i]: donors[order[i]] for i in range(len(donors))}
        # A problem whose own run opened no block takes the first donor's latents if it opens one now.
        return lambda indices: SlotSource([slots[donor_of.get(i, donors[0] if donors else i)] for i in indices])
    if name == "oracle":
        if targets is None:
            raise ValueError("the oracle intervention needs the stage-1 targets")
        tables = [
            {(b, p): t[b, p] for b in range(t.shape[0]) for p in range(t.shape[1])} if t is not None else {}
            for t in targets
        ]
        return lambda indices: SlotSource([tables[i] for i in indices])
    raise UnknownNameError(f"unknown intervention {name!r}; known: {INTERVENTIONS}")


# ---------------------------------------------------------------------------------------------------------
# Scoring and statistics
# ---------------------------------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int) -> tuple[float, float]:
    """95 % Wilson score interval for a rate (``successes`` may be fractional: a mean over samples)."""
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(run: Sequence[float], base: Sequence[float]) -> dict[str, Any]:
    """Mean per-problem difference ``run - base`` with a 95 % normal interval (problems paired)."""
    diffs = [a - b for a, b in zip(run, base)]
    n = len(diffs)
    if n == 0:
        return {"value": 0.0, "ci95": [0.0, 0.0]}
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return {"value": mean, "ci95": [mean - half, mean + half]}


def score_samples(rows: Sequence[dict], samples: Sequence[Sequence[str]]) -> list[list[dict]]:
    """``scores[sample][row]``: :func:`~mirage_tasks.score_row` of every completion of every sample run."""
    return [[score_row(row, text) for row, text in zip(rows, texts)] for texts in samples]


def summarize(rows: Sequence[dict], scores: Sequence[Sequence[dict]], base: dict | None = None) -> dict[str, Any]:
    """Counts and rates of one run (over its samples), overall and per level.

    A problem's score is its mean correctness over the samples; rates are means over problems with a Wilson
    interval. With ``base`` (the plain run's summary), each group also gets ``difference`` to it: the paired mean
    difference with a 95 % interval.
    """
    n_samples = len(scores)
    per_problem = [sum(sample[i]["correct"] for sample in scores) / n_samples for i in range(len(rows))]
    invalid = [sum(not sample[i]["valid"] for sample in scores) / n_samples for i in range(len(rows))]

    def group(indices: list[int], key: str | None) -> dict[str, Any]:
        n = len(indices)
        correct = sum(per_problem[i] for i in indices)
        out = {
            "n": n,
            "correct": correct,
            "success_rate": correct / n if n else 0.0,
            "ci95": list(wilson_interval(correct, n)),
            "invalid": sum(invalid[i] for i in indices),
            "invalid_rate": sum(invalid[i] for i in indices) / n if n else 0.0,
        }
        if base is not None:
            reference = base["per_problem"]
            out["difference"] = paired_difference([per_problem[i] for i in indices], [reference[i] for i in indices])
        return out

    levels: dict[int, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        levels[int(row["level"])].append(i)
    summary = group(list(range(len(rows))), None)
    summary["per_level"] = {str(level): group(indices, str(level)) for level, indices in sorted(levels.items())}
    summary["samples"] = [sum(s["correct"] for s in sample) / max(1, len(rows)) for sample in scores]
    summary["per_problem"] = per_problem
    return summary


def best_constant_answer(rows: Sequence[dict]) -> dict[str, Any]:
    """The best single answer given to every row (the baseline a success rate must beat): among the answers of the
    rows themselves, and for planning also every plan of one or two moves. Chosen in hindsight on these rows, so it
    is an optimistic baseline (a plan that sweeps the map can pass over many goals: reaching the goal ends a walk)."""
    candidates = Counter(str(row["answer"]) for row in rows if row.get("answer"))
    if any(row["task"] == "vsp_planning" for row in rows):
        moves = "LDRU"
        candidates.update({a: 0 for a in moves} | {a + b: 0 for a in moves for b in moves})
    best = {"answer": None, "success_rate": 0.0}
    for answer in candidates:
        text = f"\\boxed{{{answer}}}"
        rate = sum(score_row(row, text)["correct"] for row in rows) / max(1, len(rows))
        if rate > best["success_rate"]:
            best = {"answer": answer, "success_rate": rate}
    return best


# ---------------------------------------------------------------------------------------------------------
# What the latents hold
# ---------------------------------------------------------------------------------------------------------
def _pairwise_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """Cosines of all distinct pairs of rows of ``vectors`` (N, D), as a flat tensor."""
    if vectors.shape[0] < 2:
        return torch.zeros(0)
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    sims = unit @ unit.T
    upper = torch.triu_indices(len(unit), len(unit), offset=1)
    return sims[upper[0], upper[1]]


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def similarity_figures(blocks: list[torch.Tensor]) -> dict[str, Any]:
    """For per-problem first blocks ``(k, D)``: cosines across problems (same slot) and within a block."""
    across, within = [], []
    if blocks:
        stacked = torch.stack(blocks)  # (N, k, D)
        across = [_pairwise_cosines(stacked[:, j]) for j in range(stacked.shape[1])]
        within = [_pairwise_cosines(block) for block in blocks]
    across_all = torch.cat(across) if across else torch.zeros(0)
    within_all = torch.cat(within) if within else torch.zeros(0)
    return {
        "cosine_across_problems": _mean(across_all),
        "cosine_within_block": _mean(within_all),
        "_across": across_all.tolist(),
        "_within": within_all.tolist(),
    }


def retrieval(blocks: dict[int, torch.Tensor], targets: dict[int, torch.Tensor], top: int = 5) -> dict[str, Any]:
    """Imagination retrieval: for each problem with a latent block, rank the bank (every problem with a target) by
    the mean over slots of cos(latent_j, target_j); report how often the problem's own helper image comes first /
    within the top ``top``, against chance."""
    bank = sorted(targets)
    queries = [i for i in sorted(blocks) if i in targets]
    if not bank or not queries:
        return {"n": 0, "bank": len(bank)}
    bank_unit = torch.nn.functional.normalize(torch.stack([targets[i] for i in bank]).float(), dim=-1)  # (M, k, D)
    ranks, ranked = {}, {}
    for i in queries:
        query = torch.nn.functional.normalize(blocks[i].float(), dim=-1)  # (k, D)
        scores = (bank_unit * query.unsqueeze(0)).sum(-1).mean(-1)  # (M,)
        order = torch.argsort(scores, descending=True).tolist()
        ranked[i] = [(bank[j], float(scores[j])) for j in order[:top]]
        ranks[i] = order.index(bank.index(i))
    n, m = len(queries), len(bank)
    return {
        "n": n,
        "bank": m,
        "top1": sum(r == 0 for r in ranks.values()) / n,
        "top5": sum(r < top for r in ranks.values()) / n,
        "chance_top1": 1 / m,
        "chance_top5": min(top, m) / m,
        "mean_rank": sum(ranks.values()) / n + 1,
        "_ranked": {str(i): ranked[i] for i in queries},
    }


def latent_diagnostics(model, plain: Completions, targets: list[torch.Tensor | None], k: int) -> dict[str, Any]:
    """Norms, similarity across problems and within a block (latents beside stage-1 targets), and retrieval."""
    blocks = {i: latents[:k] for i, latents in enumerate(plain.latents) if latents.shape[0] >= k}
    first_targets = {i: t[0] for i, t in enumerate(targets) if t is not None and t.shape[0]}
    embeddings = model.get_input_embeddings().weight.detach().float()
    generated = [latents for latents in plain.latents if latents.numel()]
    all_latents = torch.cat(generated) if generated else torch.zeros(0, embeddings.shape[1])
    all_targets = torch.cat([t.flatten(0, 1) for t in first_targets.values()]) if first_targets else None
    return {
        "rows_with_block": len(blocks),
        "norms": {
            "latent": _mean(all_latents.norm(dim=-1)),
            "token_embedding": _mean(embeddings.norm(dim=-1)),
            "target": _mean(all_targets.norm(dim=-1)) if all_targets is not None else None,
        },
        "latents": similarity_figures(list(blocks.values())),
        "targets": similarity_figures(list(first_targets.values())),
        "retrieval": retrieval(blocks, first_targets),
    }


# ---------------------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------------------
@dataclass
class EvaluationConfig:
    """How to evaluate (see :func:`evaluate`)."""

    batch_size: int = field(default=16, metadata={"help": "Rows per generation batch."})
    max_new_tokens: int = field(default=512, metadata={"help": "Token budget per completion."})
    num_samples: int = field(default=1, metadata={"help": "Completions per problem; > 1 samples (else greedy)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with num_samples > 1)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling mass (with num_samples > 1)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, noise and the shuffle derangement."})
    interventions: tuple[str, ...] = field(
        default=INTERVENTIONS, metadata={"help": "Latent interventions to run (Mirage models only)."}
    )
    diagnostics: bool = field(default=True, metadata={"help": "Latent norms, similarities and retrieval."})
    generation_kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "More `generate` arguments (not saved in results.json)."}
    )

    def __post_init__(self):
        unknown = [name for name in self.interventions if name not in INTERVENTIONS]
        if unknown:
            raise UnknownNameError(f"unknown interventions {unknown}; known: {INTERVENTIONS}")
        if self.num_samples < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples, batch_size and max_new_tokens must be >= 1")


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: ``results`` (JSON-ready) and the per-run, per-sample completions."""

    results: dict[str, Any]
    rows: list[dict]
    completions: dict[str, list[Completions]]
    scores: dict[str, list[list[dict]]]


def config_hash(config) -> str:
    """A short hash of a model config (name and version fields left out), recorded with results so that they can
    be checked against the model they are attached to. Left out too, so that a model evaluated in memory hashes as
    its saved folder does: `architectures` (`save_pretrained` fills it in) and `use_cache` (a run-time switch that
    `Trainer` turns off while training)."""
    ignored = ("_name_or_path", "transformers_version", "architectures", "use_cache")
    data = {k: v for k, v in config.to_dict().items() if k not in ignored}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def evaluate(
    model, processor, rows: Sequence[dict], config: EvaluationConfig | None = None, *, model_name=None, data_name=None
):
    """Score ``model`` on ``rows``: the plain run, every intervention (Mirage models), and latent diagnostics.

    ``model_name`` and ``data_name`` are recorded in ``results.json`` (``model.name_or_path``, ``data.name``): what was
    evaluated, on what (``"official"`` for the official VSP planning test, else a dataset path or Hub id); model cards
    name the dataset from it.

    Returns an :class:`Evaluation`; write it with :func:`write_outputs`.
    """
    config = config or EvaluationConfig()
    rows = check_rows(rows)
    mirage = is_mirage(model)
    do_sample = config.num_samples > 1
    common = dict(
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        do_sample=do_sample,
        temperature=config.temperature,
        top_p=config.top_p,
        generation_kwargs=config.generation_kwargs,
    )

    def run(name: str, source_for=None) -> list[Completions]:
        return [
            generate_completions(
                model, processor, rows, seed=config.seed + 1000 * s, source_for=source_for,
                desc=f"{name} (sample {s + 1}/{config.num_samples})" if do_sample else name, **common,
            )
            for s in range(config.num_samples)
        ]  # fmt: skip

    completions = {PLAIN: run(PLAIN)}
    k = model.config.latent_num_tokens if mirage else 0
    targets = None
    interventions = list(config.interventions) if mirage else []
    if mirage and ("oracle" in interventions or config.diagnostics):
        targets = stage1_targets(model, processor, rows, config.batch_size)
    for name in interventions:
        source_for = intervention_sources(name, completions[PLAIN][0], k, config.seed, targets)
        completions[name] = run(name, source_for)

    scores = {name: score_samples(rows, [c.texts for c in runs]) for name, runs in completions.items()}
    runs = {PLAIN: summarize(rows, scores[PLAIN])}
    for name in interventions:
        runs[name] = summarize(rows, scores[name], base=runs[PLAIN])
    for summary in runs.values():
        summary.pop("per_problem")

    results: dict[str, Any] = {
        "model": {
            "name_or_path": model_name or getattr(model.config, "_name_or_path", None),
            "model_type": model.config.model_type,
            "config_hash": config_hash(model.config),
            "latent_num_tokens": k or None,
        },
        "data": {
            "name": data_name,
            "n": len(rows),
            "tasks": sorted({row["task"] for row in rows}),
            "levels": sorted({int(row["level"]) for row in rows}),
        },
        "generation": {key: value for key, value in asdict(config).items() if key != "generation_kwargs"}
        | {"do_sample": do_sample, "interventions": interventions},
        "baselines": {"best_constant_answer": best_constant_answer(rows)},
        "runs": runs,
    }
    if mirage and config.diagnostics:
        results["diagnostics"] = latent_diagnostics(model, completions[PLAIN][0], targets, k)
    return Evaluation(results, rows, completions, scores)


# ---------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------
def prediction_lines(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One record per problem, run and sample: what ``predictions.jsonl`` holds."""
    lines = []
    for name, runs in evaluation.completions.items():
        for sample, (completions, scores) in enumerate(zip(runs, evaluation.scores[name])):
            for row, text, score in zip(evaluation.rows, completions.texts, scores):
                lines.append(
                    {
                        "id": row["id"],
                        "task": row["task"],
                        "level": int(row["level"]),
                        "run": name,
                        "sample": sample,
                        "key": problem_key(row),
                        "completion": text,
                        "parsed": extract_boxed(text),
                        "outcome": score["outcome"],
                        "correct": score["correct"],
                        "valid": score["valid"],
                    }
                )
    return lines


def _public(value):
    """``value`` without the private (``_``-prefixed) keys kept for figures."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def write_outputs(evaluation: Evaluation, output_dir: str | os.PathLike, *, figures: bool = True) -> Path:
    """Write ``results.json``, ``predictions.jsonl``, ``summary.md`` and (with ``figures``) PNG figures."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = _public(evaluation.results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for line in prediction_lines(evaluation):
            handle.write(json.dumps(line) + "\n")
    names = []
    if figures:
        from . import evaluation_figures

        names = evaluation_figures.write_figures(evaluation, out)
    (out / "summary.md").write_text(summary_markdown(results, names), encoding="utf-8")
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def summary_markdown(results: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """A short human-readable summary of ``results.json``."""
    model, data, runs = results["model"], results["data"], results["runs"]
    baseline = results["baselines"]["best_constant_answer"]
    lines = [
        f"# Evaluation of `{model['name_or_path']}`",
        "",
        f"{data['n']} problems ({', '.join(data['tasks'])}; levels {', '.join(map(str, data['levels']))}); "
        f"{'sampled' if results['generation']['do_sample'] else 'greedy'} decoding, "
        f"{results['generation']['num_samples']} sample(s) per problem.",
        "",
        "| run | success | 95% interval | invalid | change vs plain (95% interval) |",
        "| --- | ---: | :---: | ---: | :---: |",
    ]
    for name, run in runs.items():
        lo, hi = run["ci95"]
        change = ""
        if "difference" in run:
            d = run["difference"]
            change = f"{100 * d['value']:+.1f} pts ({100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f})"
        lines.append(
            f"| {name} | {_pct(run['success_rate'])} | {_pct(lo)} – {_pct(hi)} | {_pct(run['invalid_rate'])} | {change} |"
        )
    lines += ["", f"Best constant answer: `{baseline['answer']}` scores {_pct(baseline['success_rate'])}.", ""]
    levels = list(runs[PLAIN]["per_level"])
    lines += ["| run | " + " | ".join(f"level {lv}" for lv in levels) + " |", "| --- |" + " ---: |" * len(levels)]
    for name, run in runs.items():
        lines.append(f"| {name} | " + " | ".join(_pct(run["per_level"][lv]["success_rate"]) for lv in levels) + " |")
    diagnostics = results.get("diagnostics")
    if diagnostics:
        norms, ret = diagnostics["norms"], diagnostics["retrieval"]
        lines += [
            "",
            "## What the latents hold",
            "",
            f"- {diagnostics['rows_with_block']} of {data['n']} plain completions open a latent block.",
            f"- Mean norm: latents {norms['latent'] or 0:.3g}, token embeddings {norms['token_embedding']:.3g}, "
            f"stage-1 targets {norms['target'] or 0:.3g}.",
            "- Mean cosine across problems (same slot): latents "
            f"{_fmt(diagnostics['latents']['cosine_across_problems'])}, targets "
            f"{_fmt(diagnostics['targets']['cosine_across_problems'])}; within a block: latents "
            f"{_fmt(diagnostics['latents']['cosine_within_block'])}, targets "
            f"{_fmt(diagnostics['targets']['cosine_within_block'])}.",
        ]
        if ret.get("n"):
            lines.append(
                f"- Imagination retrieval over a bank of {ret['bank']} helper images: top-1 {_pct(ret['top1'])} "
                f"(chance {_pct(ret['chance_top1'])}), top-5 {_pct(ret['top5'])} (chance {_pct(ret['chance_top5'])})."
            )
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "How to read these figures: `docs/evaluation.md`.", ""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
