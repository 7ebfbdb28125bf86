"""Dataset cards for generated task data: render with huggingface_hub's ``DatasetCard``, push with ``push_to_hub``.

The card's YAML header names the parquet files under ``data/`` as the ``train``/``test`` splits (``configs``), so a
folder written by ``examples/make_dataset.py`` is laid out exactly like a Hub dataset repository and loads with
``load_dataset(folder)`` or, once pushed, ``load_dataset(repo_id)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData

TEMPLATE_PATH = Path(__file__).parent / "templates" / "dataset_card.md"

_TASK_TEXT = {
    "vsp_planning": (
        "VSP spatial planning",
        "A FrozenLake map is shown; the model must give the fewest moves (`L`/`R`/`U`/`D`) that take the player "
        "from the start to the goal without falling into a hole. The helper image is the map with the shortest path "
        "drawn as red arrows.",
    ),
    "vsp_reasoning": (
        "VSP spatial reasoning",
        "A FrozenLake map and an action plan are shown; the model must say whether the plan succeeds (A), falls "
        "into a hole (B) or ends safely away from the goal (C); the three answers are equally frequent. The helper "
        "image is the map at the step that decides the outcome.",
    ),
    "jigsaw": (
        "Jigsaw",
        "A grid picture (one color per row, one shape per column) has a missing cell; the model must pick which of "
        "two candidate pieces (A, B) fills it. The helper image is the picture with the right piece in place.",
    ),
}
_VARIANT_TEXT = {
    "direct": "It holds the answer only: `The answer is \\boxed{...}.`",
    "cot": "It holds templated step-by-step reasoning in `<think> </think>`, then the answer in `\\boxed{}`.",
    "mirage-direct": "It holds a latent block placeholder `<output_image>` (where the model imagines the helper "
    "image), then the answer in `\\boxed{}`.",
    "mirage-cot": "It holds reasoning in `<think>`, a latent block placeholder `<output_image>` where the helper image "
    "belongs, more reasoning, then the answer in `\\boxed{}`.",
}


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def render_dataset_card(
    *,
    task: str,
    variant: str,
    split_sizes: Mapping[str, int],
    levels: str,
    seed: int | str,
    example_completion: str,
    command: str,
    excluded_official: int = 0,
    repo_id: str = "path/to/this/folder",
    license: str = "apache-2.0",
) -> DatasetCard:
    """Fill the dataset card template for one generated task dataset.

    Args:
        task, variant: what was generated (see ``mirage_tasks.TASKS`` and ``mirage_tasks.VARIANTS``).
        split_sizes: rows per split, e.g. ``{"train": 1000, "test": 200}``; each split is ``data/<split>-*.parquet``.
        levels: the levels as given on the command line (``"3-6"``).
        seed: the generation seed.
        example_completion: one completion, shown in the card.
        command: the command line that regenerates the data.
        excluded_official: how many official test maps were kept out of the data (0 = none).
        repo_id: the Hub repository shown in the loading snippet.
        license: the card's license identifier.
    """
    title, description = _TASK_TEXT[task]
    card_data = DatasetCardData(
        language="en",
        license=license,
        pretty_name=f"Mirage {title} ({variant})",
        size_categories=_size_category(sum(split_sizes.values())),
        task_categories=["visual-question-answering", "image-text-to-text"],
        tags=["mirage", "latent-visual-reasoning", "vsp", "frozenlake", "synthetic", task, variant],
        source_datasets=["original"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"data/{name}-*.parquet"} for name in split_sizes],
            }
        ],
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        pretty_name=card_data.pretty_name,
        task=task,
        task_title=title,
        task_description=description,
        variant=variant,
        variant_description=_VARIANT_TEXT[variant],
        split_sizes=dict(split_sizes),
        levels=levels,
        seed=seed,
        excluded_official=excluded_official,
        example_completion=example_completion,
        command=command,
        repo_id=repo_id,
    )


def push_dataset_with_card(
    dataset_dict, card: DatasetCard, repo_id: str, *, private: bool | None = None, token: str | None = None
) -> str:
    """Push a ``datasets.DatasetDict`` with ``push_to_hub``, then replace the automatic README with ``card``.

    The YAML that ``datasets`` writes (``dataset_info``, ``configs``) is kept: it is copied into ``card`` before
    the card is pushed. Returns the dataset's Hub URL.
    """
    dataset_dict.push_to_hub(repo_id, private=private, token=token)
    try:
        pushed = DatasetCard.load(repo_id, repo_type="dataset", token=token)
        for key in ("dataset_info", "configs"):
            if key in pushed.data:
                card.data[key] = pushed.data[key]
    except Exception:  # no README came back: keep the card's own configs
        pass
    card.push_to_hub(repo_id, repo_type="dataset", token=token)
    return f"https://huggingface.co/datasets/{repo_id}"
