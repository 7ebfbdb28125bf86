"""Figures of an evaluation: success by level per run, latent similarity distributions, the retrieval grid.

Drawn with matplotlib's non-interactive backend; each function writes one PNG and returns its file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .evaluation import PLAIN, Evaluation, helper_images


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def success_by_level(results: dict[str, Any], path: Path) -> str:
    """Grouped bars: success rate per level (and overall) for the plain run and each intervention, 95 % intervals."""
    plt = _pyplot()
    runs = results["runs"]
    levels = list(runs[PLAIN]["per_level"])
    groups = [*levels, "all"]
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups) * max(1, len(runs)) / 3), 4))
    for index, (name, run) in enumerate(runs.items()):
        stats = [run["per_level"][level] for level in levels] + [run]
        rates = np.array([s["success_rate"] for s in stats]) * 100
        low = np.clip(rates - np.array([s["ci95"][0] for s in stats]) * 100, 0, None)  # rounding at 0 % / 100 %
        high = np.clip(np.array([s["ci95"][1] for s in stats]) * 100 - rates, 0, None)
        x = np.arange(len(groups)) + (index - (len(runs) - 1) / 2) * width
        ax.bar(x, rates, width, yerr=[low, high], capsize=2, label=name)
    baseline = results["baselines"]["best_constant_answer"]
    if baseline["answer"] is not None:
        ax.axhline(100 * baseline["success_rate"], color="grey", linestyle="--", linewidth=1,
                   label=f"best constant answer ({baseline['answer']})")  # fmt: skip
    ax.set_xticks(np.arange(len(groups)), [f"level {g}" if g != "all" else "all" for g in groups])
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Success by level, plain run and latent interventions (n={results['data']['n']}, 95% intervals)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def similarity(diagnostics: dict[str, Any], path: Path) -> str:
    """Histograms of pairwise cosine: latents vs stage-1 targets, across problems and within a block."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in (
        (axes[0], "_across", "across problems (same slot)"),
        (axes[1], "_within", "within a block"),
    ):
        for name, color in (("latents", "tab:blue"), ("targets", "tab:orange")):
            values = diagnostics[name].get(key, [])
            if values:
                ax.hist(values, bins=40, range=(-1, 1), alpha=0.6, color=color, density=True,
                        label=f"{name} (mean {np.mean(values):.3f})")  # fmt: skip
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("density")
        ax.set_title(f"Pairwise cosine {title}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def retrieval_grid(evaluation: Evaluation, path: Path, rows_shown: int = 6, top: int = 3) -> str | None:
    """For a few problems: input map, true helper image, and the top retrieved helper images (cosine in titles,
    green frame when it is the problem's own)."""
    ranked = evaluation.results.get("diagnostics", {}).get("retrieval", {}).get("_ranked")
    if not ranked:
        return None
    plt = _pyplot()
    shown = list(ranked)[:rows_shown]
    fig, axes = plt.subplots(len(shown), 2 + top, figsize=(2.2 * (2 + top), 2.3 * len(shown)), squeeze=False)
    rows = evaluation.rows
    for line, key in zip(axes, shown):
        i = int(key)
        panels = [(rows[i]["images"][0], "input", None), (helper_images(rows[i])[0], "true helper", None)]
        panels += [(helper_images(rows[j])[0], f"#{n + 1}: cos {score:.3f}", j == i) for n, (j, score) in
                   enumerate(ranked[key][:top])]  # fmt: skip
        for ax, (image, title, own) in zip(line, panels):
            ax.imshow(np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image))
            ax.set_title(title, fontsize=8, color={True: "green", False: "red", None: "black"}[own])
            ax.set_xticks([])
            ax.set_yticks([])
            if own is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor("green" if own else "red")
                    spine.set_linewidth(3)
        line[0].set_ylabel(str(rows[i]["id"]), fontsize=7)
    ret = evaluation.results["diagnostics"]["retrieval"]
    fig.suptitle(
        f"Imagination retrieval: top-1 {100 * ret['top1']:.0f}% (chance {100 * ret['chance_top1']:.1f}%), "
        f"bank of {ret['bank']} helper images"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def write_figures(evaluation: Evaluation, out: Path) -> list[str]:
    """Every figure the evaluation supports, into ``out``; returns the file names written."""
    names = [success_by_level(evaluation.results, out / "success_by_level.png")]
    diagnostics = evaluation.results.get("diagnostics")
    if diagnostics:
        names.append(similarity(diagnostics, out / "latent_similarity.png"))
        grid = retrieval_grid(evaluation, out / "retrieval.png")
        if grid:
            names.append(grid)
    return names
