"""Dataset cards for generated task data, and the one commit that pushes a dataset with its card.

The card's YAML header names the parquet files under ``data/`` as the splits (``configs``) and carries the features
and split sizes (``dataset_info``), so a folder written by ``examples/make_dataset.py`` is laid out exactly like a
Hub dataset repository and loads with ``load_dataset(folder)`` or, once pushed, ``load_dataset(repo_id)``.
:func:`push_dataset_folder` uploads that folder -- every split's parquet files (images embedded) and the card -- in a
single commit, so the repository never holds data without its card or a half-written card.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData, HfApi

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


_HELPER_STEP_TEXT = {
    "decisive": "the map at the step that decides the outcome (where the plan falls into a hole, reaches the goal, "
    "or ends)",
    "random": "the map at a random step of the plan (as in the official samples)",
}


def generator_version() -> str:
    """The version of the installed ``mirage-vlm`` distribution (the task generators'), or ``"source"`` when run
    from a checkout that is not installed."""
    try:
        return metadata.version("mirage-vlm")
    except metadata.PackageNotFoundError:
        return "source"


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
    features=None,
    helper_step: str = "decisive",
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
        features: the rows' ``datasets.Features``, written to the metadata (``dataset_info``) and listed.
        helper_step: VSP reasoning only: which step the helper image shows (``decisive`` or ``random``).
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
        dataset_info=_dataset_info(features, split_sizes),
        mirage={"generator": "mirage-vlm", "generator_version": generator_version(), "task": task,
                "variant": variant, "levels": str(levels), "seed": seed, "helper_step": helper_step,
                "excluded_official_test_maps": excluded_official},
    )  # fmt: skip
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
        generator_version=generator_version(),
        helper_step=_HELPER_STEP_TEXT[helper_step] if task == "vsp_reasoning" else None,
        feature_lines=[f"`{name}`: {_describe(feature)}" for name, feature in (features or {}).items()],
    )


def _describe(feature) -> str:
    """A short type description of a ``datasets`` feature for the card."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, (list, datasets.Sequence)) or hasattr(feature, "feature"):
        inner = feature[0] if isinstance(feature, list) else feature.feature
        return f"list of {_describe(inner)}"
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in feature.items()) + "}"
    return type(feature).__name__


def _dataset_info(features, split_sizes: Mapping[str, int]) -> dict[str, Any] | None:
    """``dataset_info`` metadata as ``datasets`` writes it: features and split sizes."""
    if features is None:
        return None
    return {
        "features": features._to_yaml_list(),
        "splits": [{"name": name, "num_examples": size} for name, size in split_sizes.items()],
    }


def dataset_folder_files(folder: str | os.PathLike) -> list[str]:
    """The files of a dataset folder that make its Hub repository: ``README.md`` and the parquet files of every split
    its card names (``data/<split>-*.parquet``). Raises ``FileNotFoundError`` naming what is missing."""
    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md dataset card: write it with render_dataset_card(...).save")
    card = DatasetCard.load(folder / "README.md")
    files = ["README.md"]
    for config in card.data.get("configs") or []:
        for entry in config["data_files"]:
            found = sorted(p.relative_to(folder).as_posix() for p in folder.glob(entry["path"]))
            if not found:
                raise FileNotFoundError(f"{folder}: the card names split {entry['split']!r} as {entry['path']}, but "
                                        "no such file exists")  # fmt: skip
            files += found
    if len(files) == 1:
        raise FileNotFoundError(f"{folder}/README.md names no data files (configs)")
    return files


def push_dataset_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload dataset with its card",
):
    """Create the dataset repository if needed and upload the card and every split's parquet files in one commit.
    ``token`` defaults to the environment (``HF_TOKEN`` or the saved login) and is never printed. Returns the
    ``CommitInfo``."""
    folder = Path(folder)
    files = dataset_folder_files(folder)  # checked before anything is sent
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    return api.create_commit(
        repo_id=repo_id, repo_type="dataset", operations=operations, commit_message=commit_message
    )


def push_dataset_with_card(
    dataset_dict, card: DatasetCard, repo_id: str, *, private: bool | None = None, token: str | None = None
) -> str:
    """Push a ``datasets.DatasetDict`` and ``card`` in one commit: each split written as
    ``data/<split>-00000-of-00001.parquet`` (images embedded), the card as ``README.md`` (its ``configs`` must name
    those files, as :func:`render_dataset_card` does). Returns the dataset's Hub URL."""
    with tempfile.TemporaryDirectory() as staging:
        (Path(staging) / "data").mkdir()
        for name, split in dataset_dict.items():
            split.to_parquet(str(Path(staging) / "data" / f"{name}-00000-of-00001.parquet"))
        card.save(str(Path(staging) / "README.md"))
        push_dataset_folder(staging, repo_id, private=private, token=token)
    return f"https://huggingface.co/datasets/{repo_id}"
