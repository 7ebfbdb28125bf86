"""Model pages for Mirage checkpoints: the card (rendered with huggingface_hub's ``ModelCard``), the exact file set a
Hub model page needs, and one commit that uploads it.

A page is a folder written by ``model.save_pretrained`` + ``processor.save_pretrained`` (weights in safetensors,
processor, remote code with ``auto_map``, generation config) plus what this module adds:

* ``README.md``: the card. Its metadata carries ``model-index`` built from the evaluation command's ``results.json``
  (checked to belong to the model: same config hash), ``base_model``, ``datasets``, ``library_name``,
  ``pipeline_tag``, tags, license and the paper; its body the results, figures, example outputs with their latent
  block, a usage snippet that runs as written, how to read ``.latents``, the training recipe per stage, limitations.
* ``eval/``: ``results.json`` and the figures the card shows.
* ``examples/``: one input (``0.png``, ``0.json`` with the chat messages) that the usage snippet loads.

:func:`model_page_files` decides what is uploaded, whichever path pushes (``push_model_folder``, ``Trainer.push_to_hub``
through ``trainers.hub``): never ``checkpoint-*``, optimizer or scheduler states, ``training_args.bin`` (a pickle that
holds the training arguments, tokens included), logs or anything else left in an output folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
PAPER_URL = "https://arxiv.org/abs/2506.17218"
OFFICIAL_DATA = "official"
"""``results.json``'s ``data.name`` for the official VSP spatial-planning test shipped with ``mirage_tasks``."""

EVAL_DIR, EXAMPLES_DIR = "eval", "examples"
EVAL_FILES = ("results.json", "success_by_level.png", "latent_similarity.png", "retrieval.png")
"""What ``eval/`` on a page holds (``predictions.jsonl`` and ``summary.md`` stay local: the card shows both)."""
EXAMPLE_FILES = ("0.png", "0.json")
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TASK_TITLES = {"vsp_planning": "VSP spatial planning", "vsp_reasoning": "VSP spatial reasoning", "jigsaw": "Jigsaw"}
RUN_TITLES = {
    "plain": "as generated",
    "zero": "latents zeroed",
    "mean": "latents replaced by their mean",
    "noise": "latents replaced by noise",
    "shuffle": "latents of another problem",
    "oracle": "stage-1 targets of its own helper image",
}


class IncompleteModelFolderError(FileNotFoundError):
    """A folder lacks something a Mirage model page needs; the message names what and how to get it."""


class ResultsMismatchError(ValueError):
    """An evaluation's ``results.json`` was measured on another model than the folder holds."""


# ---------------------------------------------------------------------------------------------------------------------
# What a page holds
# ---------------------------------------------------------------------------------------------------------------------
def read_mirage_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict; errors if there is none or it is not a Mirage config."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise IncompleteModelFolderError(
            f"{folder} has no config.json, so it is not a saved Mirage model: save one there with "
            "trainers.save_for_hub(model, processor, folder) (or model.save_pretrained + processor.save_pretrained)"
        )
    config = json.loads(path.read_text())
    if config.get("model_type") != "mirage":
        raise ValueError(f"{path}: model_type is {config.get('model_type')!r}, not 'mirage'")
    return config


def remote_code_files(folder: str | os.PathLike) -> list[str]:
    """The remote-code files the folder's ``auto_map`` entries name, with every sibling they import as
    ``from .x import Y`` (what ``trust_remote_code`` loading fetches). Missing ones raise, naming them."""
    folder = Path(folder)
    modules: set[str] = set()
    for name in ("config.json", "processor_config.json"):
        if (folder / name).is_file():
            for reference in (json.loads((folder / name).read_text()).get("auto_map") or {}).values():
                for item in reference if isinstance(reference, list) else [reference]:
                    if item:
                        modules.add(item.split("--")[-1].rsplit(".", 1)[0])
    found, missing, queue = set(), set(), sorted(modules)
    while queue:
        module = queue.pop()
        path = folder / f"{module}.py"
        if module in found or module in missing:
            continue
        if not path.is_file():
            missing.add(module)
            continue
        found.add(module)
        queue += re.findall(r"^\s*from\s+\.(\w+)\s+import", path.read_text(), flags=re.MULTILINE)
    if missing:
        raise IncompleteModelFolderError(
            f"{folder} lacks remote-code files {sorted(m + '.py' for m in missing)} that its auto_map or the code "
            "imports: save the model with save_pretrained (it copies them)"
        )
    return sorted(f"{m}.py" for m in found)


def model_page_files(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` (relative POSIX paths, sorted) that make its Hub model page: card, config, generation
    config, safetensors weights, processor, remote code, ``eval/`` results and figures, ``examples/``.

    Raises:
        IncompleteModelFolderError: something a complete Mirage page needs is missing (every missing item is named):
            config.json (Mirage), safetensors weights, generation_config.json, remote code with ``auto_map`` entries
            for ``AutoConfig``/``AutoModel``/``AutoModelForImageTextToText``/``AutoProcessor``, processor and
            tokenizer files, README.md, and the example the card's snippet loads.
    """
    folder = Path(folder)
    config = read_mirage_config(folder)
    missing: list[str] = []
    files: list[str] = ["config.json"]
    if (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(set(index["weight_map"].values()))
        files += ["model.safetensors.index.json"] + shards
        missing += [shard for shard in shards if not (folder / shard).is_file()]
    elif (folder / "model.safetensors").is_file():
        files.append("model.safetensors")
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        missing.append(f"model.safetensors (weights; found {found or 'none'})")
    auto_map = config.get("auto_map") or {}
    missing += [
        f"auto_map entry {name} in config.json"
        for name in ("AutoConfig", "AutoModel", "AutoModelForImageTextToText")
        if name not in auto_map
    ]
    processor_config = folder / "processor_config.json"
    if not processor_config.is_file():
        missing.append("processor_config.json (save the processor with processor.save_pretrained)")
    elif "AutoProcessor" not in (json.loads(processor_config.read_text()).get("auto_map") or {}):
        missing.append("auto_map entry AutoProcessor in processor_config.json")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").is_file():
        missing.append("tokenizer.json (the tokenizer)")
    for name in ("generation_config.json", "README.md"):
        if not (folder / name).is_file():
            missing.append(name + (" (write the card with hub_cards.write_model_card)" if name == "README.md" else ""))
    missing += [f"{EXAMPLES_DIR}/{name} (the card's usage example)" for name in EXAMPLE_FILES
                if not (folder / EXAMPLES_DIR / name).is_file()]  # fmt: skip
    try:
        files += remote_code_files(folder)
    except IncompleteModelFolderError as error:
        missing.append(str(error).split(" lacks ", 1)[1].split(" that ", 1)[0])
    if missing:
        raise IncompleteModelFolderError(
            f"{folder} is not a complete Mirage model page; missing: {'; '.join(missing)}"
        )
    files += [name for name in ("generation_config.json", "README.md", *PROCESSOR_FILES) if (folder / name).is_file()]
    files += [f"{EXAMPLES_DIR}/{name}" for name in EXAMPLE_FILES]
    files += [f"{EVAL_DIR}/{name}" for name in EVAL_FILES if (folder / EVAL_DIR / name).is_file()]
    pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    if pickles:  # cannot happen with the names above; kept as the guarantee the page makes
        raise ValueError(f"{folder}: refusing to upload pickle files {pickles}")
    return sorted(set(files))


def page_operations(folder: str | os.PathLike) -> list[CommitOperationAdd]:
    """One ``CommitOperationAdd`` per file of :func:`model_page_files`, in order."""
    folder = Path(folder)
    return [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in model_page_files(folder)
    ]


def commit_model_page(
    api: HfApi,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload Mirage model",
    run_as_future: bool = False,
):
    """Upload the page files of ``folder`` to ``repo_id`` in one commit (``HfApi.create_commit``). The file set is
    checked first, so an incomplete folder uploads nothing."""
    operations = page_operations(folder)
    return api.create_commit(
        repo_id=repo_id,
        repo_type="model",
        operations=operations,
        commit_message=commit_message,
        token=token,
        revision=revision,
        run_as_future=run_as_future,
    )


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload Mirage model",
):
    """Create ``repo_id`` if needed and upload the folder's page (see :func:`model_page_files`) in one commit.

    The folder is checked before anything is sent. ``token`` defaults to the environment (``HF_TOKEN`` or the
    saved login); it is never printed. Returns the ``CommitInfo``.
    """
    model_page_files(folder)  # fail before creating a repository
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return commit_model_page(api, folder, repo_id, revision=revision, commit_message=commit_message)


# ---------------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------------
def load_results(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``results.json`` (given as the file or the evaluation's output folder) and the folder that holds it."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: pass the results.json (or the --output-dir) that examples/evaluate_mirage.py wrote"
        )
    results = json.loads(file.read_text())
    for key in ("model", "data", "runs"):
        if key not in results:
            raise ValueError(f"{file} has no {key!r}: is it a results.json written by mirage_tasks.evaluation?")
    return results, file.parent


def folder_config_hash(folder: str | os.PathLike, config=None) -> str:
    """``mirage_tasks.evaluation.config_hash`` of ``config`` (a ``MirageConfig``), or of the folder's saved config:
    what evaluation records."""
    from mirage_tasks.evaluation import config_hash
    from modeling_mirage import MirageConfig

    return config_hash(config if config is not None else MirageConfig.from_pretrained(str(folder)))


def check_results_match(
    results: Mapping[str, Any], folder: str | os.PathLike, where: str = "results.json", config=None
) -> None:
    """Raise :class:`ResultsMismatchError` if ``results`` were measured on another model than ``folder`` (or the
    in-memory ``config``) holds: a model type other than Mirage, or another config hash."""
    model = results["model"]
    if model.get("model_type") != "mirage":
        raise ResultsMismatchError(
            f"{where} was measured on {model.get('name_or_path')!r} (model_type {model.get('model_type')!r}), not on "
            f"a Mirage model; evaluate {folder} with examples/evaluate_mirage.py --model {folder}"
        )
    expected = folder_config_hash(folder, config)
    if model.get("config_hash") != expected:
        raise ResultsMismatchError(
            f"{where} belongs to another model: it was measured on {model.get('name_or_path')!r} with config hash "
            f"{model.get('config_hash')!r}, but {folder} has config hash {expected!r}; evaluate this folder with "
            f"examples/evaluate_mirage.py --model {folder} --output-dir {Path(folder) / EVAL_DIR}"
        )


def dataset_of(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"type", "name", "split"}`` of the evaluated data: the official VSP planning test, or the named set."""
    data = results["data"]
    name, tasks = data.get("name"), data.get("tasks") or []
    if name == OFFICIAL_DATA:
        return {
            "type": "vsp-spatial-planning-official-test",
            "name": "VSP spatial planning, official test",
            "split": "test",
        }
    title = ", ".join(TASK_TITLES.get(t, t) for t in tasks)
    if name is None:  # evaluated from Python without naming the data
        return {"type": "unnamed", "name": f"{title} (unnamed data)", "split": "test"}
    return {"type": str(name), "name": f"{title} ({Path(str(name)).name})", "split": "test"}


def model_index(results: Mapping[str, Any], model_name: str) -> list[EvalResult]:
    """The card's ``model-index`` entries: the success rate of the plain run (overall and per level, with their
    problem counts), and of each latent intervention, on the evaluated dataset."""
    dataset = dataset_of(results)
    tasks = results["data"].get("tasks") or ["task"]
    task = {"task_type": "image-text-to-text", "task_name": ", ".join(TASK_TITLES.get(t, t) for t in tasks)}
    data = {"dataset_type": dataset["type"], "dataset_name": dataset["name"], "dataset_split": dataset["split"]}
    entries = []
    for run_name, run in results["runs"].items():
        label = "success rate" if run_name == "plain" else f"success rate, {RUN_TITLES.get(run_name, run_name)}"
        entries.append(
            EvalResult(**task, **data, metric_type="accuracy", metric_name=f"{label} (n={run['n']})",
                       metric_value=round(float(run["success_rate"]), 4))
        )  # fmt: skip
        if run_name == "plain":
            for level, group in run.get("per_level", {}).items():
                entries.append(
                    EvalResult(**task, **data, dataset_config=f"level-{level}", metric_type="accuracy",
                               metric_name=f"success rate, level {level} (n={group['n']})",
                               metric_value=round(float(group["success_rate"]), 4))
                )  # fmt: skip
    return entries


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def results_tables(results: Mapping[str, Any]) -> dict[str, Any]:
    """What the card body shows from ``results.json``: markdown tables and a few sentences."""
    runs = results["runs"]
    lines = [
        "| run | success | 95% interval | invalid | change vs as generated (95% interval) |",
        "|---|---:|:---:|---:|:---:|",
    ]
    for name, run in runs.items():
        lo, hi = run["ci95"]
        change = ""
        if "difference" in run:
            d = run["difference"]
            change = f"{100 * d['value']:+.1f} pts ({100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f})"
        lines.append(
            f"| {RUN_TITLES.get(name, name)} | {_pct(run['success_rate'])} | {_pct(lo)} – {_pct(hi)} | "
            f"{_pct(run.get('invalid_rate'))} | {change} |"
        )
    levels = list(runs["plain"].get("per_level", {}))
    level_lines = ["| run | " + " | ".join(f"level {lv}" for lv in levels) + " |", "|---|" + "---:|" * len(levels)]
    for name, run in runs.items():
        level_lines.append(
            f"| {RUN_TITLES.get(name, name)} | "
            + " | ".join(
                f"{_pct(run['per_level'][lv]['success_rate'])} (n={run['per_level'][lv]['n']})" for lv in levels
            )
            + " |"
        )
    constant = results.get("baselines", {}).get("best_constant_answer") or {}
    generation = results.get("generation", {})
    decoding = "sampled" if generation.get("do_sample") else "greedy"
    diagnostics = results.get("diagnostics") or {}
    retrieval = diagnostics.get("retrieval") or {}
    return {
        "dataset": dataset_of(results)["name"],
        "n": results["data"]["n"],
        "levels": ", ".join(map(str, results["data"].get("levels", []))),
        "decoding": f"{decoding}, {generation.get('num_samples', 1)} sample(s) per problem, at most "
        f"{generation.get('max_new_tokens')} new tokens",
        "table": "\n".join(lines),
        "level_table": "\n".join(level_lines) if levels else "",
        "constant": f"`{constant.get('answer')}` scores {_pct(constant.get('success_rate'))}" if constant else None,
        "cosine_latents": (diagnostics.get("latents") or {}).get("cosine_across_problems"),
        "cosine_targets": (diagnostics.get("targets") or {}).get("cosine_across_problems"),
        "retrieval": f"top-1 {_pct(retrieval['top1'])} (chance {_pct(retrieval['chance_top1'])}), top-5 "
        f"{_pct(retrieval['top5'])} (chance {_pct(retrieval['chance_top5'])}) over {retrieval['bank']} helper images"
        if retrieval.get("n")
        else None,
    }


def example_outputs(eval_dir: str | os.PathLike, count: int = 3) -> list[dict[str, Any]]:
    """Up to ``count`` completions of the plain run from ``predictions.jsonl``, those with a latent block first."""
    path = Path(eval_dir) / "predictions.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    plain = [line for line in lines if line.get("run") == "plain" and line.get("sample", 0) == 0]
    plain.sort(key=lambda line: "<|latent_start|>" not in line["completion"])  # stable: file order otherwise
    return [
        {"id": line["id"], "level": line["level"], "completion": line["completion"], "outcome": line["outcome"]}
        for line in plain[:count]
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------------
def _hub_ids(names: Sequence[str] | str | None) -> list[str]:
    """The names that are Hub ids (``owner/name``, not an existing local path)."""
    names = [names] if isinstance(names, str) else list(names or [])
    return [n for n in names if n and re.fullmatch(r"[\w.-]+/[\w.-]+", n) and not os.path.exists(n)]


def render_model_card(
    *,
    repo_id: str,
    base_model: str,
    latent_num_tokens: int,
    latent_end_rule: str = "fixed",
    training_stages: Sequence[Mapping[str, Any]] = (),
    datasets: Sequence[str] | str | None = None,
    results: Mapping[str, Any] | None = None,
    examples: Sequence[Mapping[str, Any]] = (),
    figures: Sequence[str] = (),
    notes: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
) -> ModelCard:
    """The model card of a Mirage checkpoint.

    Args:
        repo_id: Hub repository id (or local name) used in the usage snippet and as the ``model-index`` name.
        base_model: the Qwen2.5-VL checkpoint it was converted from (in the metadata when it is a Hub id).
        latent_num_tokens: k, the pads per latent block; latent_end_rule: ``fixed`` or ``predicted``.
        training_stages: one dict per training stage run, in order (``stage``, ``steps``, ``data``, ...), shown as
            the recipe; none means a converted, untrained checkpoint.
        datasets: the training data (Hub ids go to the ``datasets`` metadata; other names only into the body).
        results: an evaluation's ``results.json`` (see ``mirage_tasks.evaluation``): ``model-index`` and tables.
        examples: completions to show (``id``, ``level``, ``completion``, ``outcome``).
        figures: paths inside the repository of the figures to show (``eval/success_by_level.png`` first).
        notes: limitations or remarks, added to the standard ones.
        license: the card's license; tags: more tags.
    """
    model_name = repo_id.rstrip("/").split("/")[-1]
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    all_tags = ["mirage", "latent-visual-reasoning", "qwen2.5-vl", "custom_code", "arxiv:2506.17218"]
    all_tags += [t for t in tags if t not in all_tags]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        base_model=_hub_ids(base_model)[0] if _hub_ids(base_model) else None,
        datasets=_hub_ids(datasets) or None,
        tags=all_tags,
        model_name=model_name if results else None,
        eval_results=model_index(results, model_name) if results else None,
        mirage={"repo_id": repo_id, "latent_num_tokens": latent_num_tokens, "latent_end_rule": latent_end_rule,
                "training_stages": [dict(s) for s in training_stages]},
    )  # fmt: skip
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        base_model=base_model,
        paper_url=PAPER_URL,
        latent_num_tokens=latent_num_tokens,
        latent_end_rule=latent_end_rule,
        stages=[dict(s) for s in training_stages],
        stage_keys=sorted({key for s in training_stages for key in s if key != "stage"}),
        datasets=datasets,
        results=results_tables(results) if results else None,
        examples=list(examples),
        figures=list(figures),
        notes=notes,
    )


def _save_example(folder: Path, example_row: Mapping[str, Any]) -> None:
    """Write the snippet's input: the row's first image (``examples/0.png``) and its chat messages (``0.json``)."""
    import io

    from PIL import Image

    image = example_row["images"][0]
    if isinstance(image, dict):  # an undecoded datasets.Image
        image = Image.open(io.BytesIO(image["bytes"])) if image.get("bytes") else Image.open(image["path"])
    (folder / EXAMPLES_DIR).mkdir(exist_ok=True)
    image.convert("RGB").save(folder / EXAMPLES_DIR / "0.png")
    (folder / EXAMPLES_DIR / "0.json").write_text(json.dumps(list(example_row["prompt"]), indent=1) + "\n")


def previous_card_data(folder: str | os.PathLike | None) -> dict[str, Any]:
    """The metadata of the card in ``folder`` (``{}`` if there is none): a later training stage inherits the base
    model, the datasets and the recipe of the stages before it from the card of the checkpoint it starts from."""
    if not folder or not (Path(folder) / "README.md").is_file():
        return {}
    return ModelCard.load(Path(folder) / "README.md").data.to_dict()


def write_model_card(
    folder: str | os.PathLike,
    *,
    results: str | os.PathLike | None = None,
    example_row: Mapping[str, Any] | None = None,
    config=None,
    **kwargs: Any,
) -> Path:
    """Write the card into ``folder/README.md``, with everything it shows: ``eval/`` (``results.json`` and figures,
    copied from the evaluation's folder after checking that the results belong to this model) and ``examples/``
    (the snippet's input, from ``example_row``: a task row with ``images`` and ``prompt``).

    k and the end rule come from ``config`` (the model's ``MirageConfig``, for a folder whose weights are not saved
    yet, as during training) or the saved config; ``base_model``, ``datasets`` and ``training_stages``, when not
    given, from the card already in the folder. Other ``kwargs`` go to :func:`render_model_card`. Returns the card's
    path.
    """
    folder = Path(folder)
    config_dict = config.to_dict() if config is not None else read_mirage_config(folder)
    if config_dict.get("model_type") != "mirage":
        raise ValueError(f"the model card is for Mirage models; got model_type {config_dict.get('model_type')!r}")
    previous = previous_card_data(folder)
    previous_mirage = previous.get("mirage") or {}
    kwargs.setdefault("latent_num_tokens", config_dict.get("latent_num_tokens", 4))
    kwargs.setdefault("latent_end_rule", config_dict.get("latent_end_rule", "fixed"))
    kwargs.setdefault("repo_id", previous_mirage.get("repo_id") or folder.name)
    kwargs.setdefault("base_model", previous.get("base_model") or "unknown")
    kwargs.setdefault("datasets", previous.get("datasets"))
    kwargs.setdefault("training_stages", previous_mirage.get("training_stages", []))
    if results is None and (folder / EVAL_DIR / "results.json").is_file():
        results = folder / EVAL_DIR  # the card is rewritten: keep the results it showed
    if example_row is not None:
        _save_example(folder, example_row)
    if results is not None:
        data, source = load_results(results)
        check_results_match(data, folder, str(Path(results)), config)
        target = folder / EVAL_DIR
        target.mkdir(exist_ok=True)
        for name in (*EVAL_FILES, "predictions.jsonl"):  # predictions stay local: the card shows a few
            stale = target / name
            if (source / name).is_file():
                if source.resolve() != target.resolve():
                    shutil.copyfile(source / name, stale)
            elif stale.is_file():
                stale.unlink()  # a figure of earlier results must not sit beside new numbers
        kwargs["results"] = data
        kwargs.setdefault("examples", example_outputs(source))
        kwargs.setdefault("figures", [f"{EVAL_DIR}/{n}" for n in EVAL_FILES[1:] if (target / n).is_file()])
    card = render_model_card(**kwargs)
    path = folder / "README.md"
    card.save(str(path))
    return path
