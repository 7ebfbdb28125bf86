"""Model cards for Mirage checkpoints: render with huggingface_hub's ``ModelCard``, push a saved folder to the Hub.

A folder written by ``model.save_pretrained`` + ``processor.save_pretrained`` already holds the remote code and
``auto_map``; ``write_model_card`` adds a ``README.md`` that says what the model is, how to load it with
``trust_remote_code=True``, what it was trained on and what it scored, so the folder is a complete Hub model page.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"


def render_model_card(
    *,
    repo_id: str,
    base_model: str,
    latent_num_tokens: int,
    latent_end_rule: str = "fixed",
    training_summary: str = "not trained (converted checkpoint)",
    datasets: str | None = None,
    metrics: Mapping[str, float | str] | None = None,
    notes: str | None = None,
) -> ModelCard:
    """The model card of a Mirage checkpoint.

    Args:
        repo_id: Hub repository id (or local name) shown in the usage snippet.
        base_model: the Qwen2.5-VL checkpoint it was converted from.
        latent_num_tokens: k, the pads per latent block.
        latent_end_rule: how generation closes a block (`fixed` or `predicted`).
        training_summary: one line on the stages run (e.g. "stage 1 (200 steps) then stage 2 (200 steps)").
        datasets: one line naming the training data.
        metrics: evaluation figures, shown as a table (keep them honest: what was measured, on what).
        notes: free text (limitations, what the numbers mean).
    """
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license="apache-2.0",
        base_model=base_model if "/" in base_model else None,
        tags=["mirage", "latent-visual-reasoning", "qwen2.5-vl", "custom_code"],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        latent_num_tokens=latent_num_tokens,
        latent_end_rule=latent_end_rule,
        training_summary=training_summary,
        datasets=datasets,
        metrics=dict(metrics) if metrics else None,
        notes=notes,
    )


def write_model_card(folder: str | Path, **kwargs) -> Path:
    """Render the card (see `render_model_card`) into `folder/README.md`, reading k and the end rule from the saved
    config when not given. Returns the card's path."""
    import json

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: save the model there first")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "mirage":
        raise ValueError(f"{config_path}: model_type is {config.get('model_type')!r}, not 'mirage'")
    kwargs.setdefault("latent_num_tokens", config.get("latent_num_tokens", 4))
    kwargs.setdefault("latent_end_rule", config.get("latent_end_rule", "fixed"))
    kwargs.setdefault("repo_id", folder.name)
    card = render_model_card(**kwargs)
    path = folder / "README.md"
    card.save(str(path))
    return path


def push_model_folder(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create `repo_id` if needed and upload the saved folder (weights, remote code, processor, card). Returns the
    repository URL. Needs network access and a token with write permission."""
    folder = Path(folder)
    missing = [f for f in ("config.json", "modeling_mirage.py", "README.md") if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete Mirage model folder: missing {missing}")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="Upload Mirage model"
    )
    return str(url)
