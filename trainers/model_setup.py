"""Getting a Mirage model ready to train, and saving it for the Hub.

* [`load_model_and_processor`]: a Mirage checkpoint as is, or a Qwen2.5-VL checkpoint converted with `from_base`
  (`"tiny"` names the embedded tiny base).
* [`freeze_vision_tower`]: the paper trains the language model only; the stage-1 targets come from this tower.
* [`language_model_lora_config`]: LoRA on the language model's projections only (the vision tower's MLP uses the same
  module names, so plain `target_modules=["q_proj", ...]` would put adapters there too).
* [`save_for_hub`]: merge LoRA if any, then write weights (safetensors), processor and remote code, and check that the
  folder has what `AutoModel.from_pretrained(dir, trust_remote_code=True)` needs.

Models are recognised by `config.model_type`, never by class: remote-code classes are different Python objects.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import PartialState
from peft import LoraConfig, PeftModel
from transformers import PretrainedConfig
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightRenaming, rename_source_key

from modeling_mirage import MirageForConditionalGeneration, MirageProcessor
from modeling_mirage.processing_mirage import check_image_scale, check_latent_num_tokens_match

TINY_BASE = "tiny"
"""Model name that means the embedded tiny Qwen2.5-VL base (built offline on first use)."""

TINY_PRETRAINED = "tiny-pretrained"
"""Model name that means the shipped tiny base pretrained by stage 0 (`mirage_tiny/pretrained`, rebuilt by
`make base`)."""

REMOTE_CODE_FILES = ("configuration_mirage.py", "generation_mirage.py", "modeling_mirage.py", "processing_mirage.py")
LANGUAGE_MODEL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


ACCEPTED_MODELS = (
    "model_name_or_path takes a local folder holding a Qwen2.5-VL or Mirage checkpoint (with its config.json), a Hub "
    "id such as 'Qwen/Qwen2.5-VL-7B-Instruct', 'tiny' (the embedded random tiny base) or 'tiny-pretrained' (the "
    "shipped tiny base pretrained to read VSP maps)"
)
MODEL_TYPES = {"mirage": "a Mirage checkpoint", "qwen2_5_vl": "a Qwen2.5-VL checkpoint, converted on load"}


def _looks_like_path(name: str) -> bool:
    """Whether a name that is no existing folder was meant as one: it starts like a path, has more than one `/`, is
    not a valid Hub id, or its first component is a local folder (e.g. `outputs/stage1` when `outputs/` exists)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/") or name.count("/") > 1:
        return True
    if "/" in name and os.path.isdir(name.split("/", 1)[0]):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def check_model_folder(folder: str) -> None:
    """Raise a clear error if the local `folder` is not a checkpoint this project can load: no `config.json` (a LoRA
    adapter, a run folder holding `checkpoint-N` subfolders, anything else: says which and what was found), or a
    `config.json` of another model type."""
    path = Path(folder)
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        check_model_type(folder, config.get("model_type", ""), config)
        return
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        raise ValueError(
            f"{folder} holds a LoRA adapter (adapter_config.json, base {base!r}), not a full model: train on from the "
            "merged model that examples/sft_mirage.py writes to its output_dir (merge_lora), or load the adapter with "
            "peft.PeftModel.from_pretrained(AutoModel.from_pretrained(<mirage base>, trust_remote_code=True), "
            f"{folder!r}) and merge it (see docs/training.md)"
        )
    checkpoints = sorted(
        (name.rstrip("/") for name in found if re.fullmatch(r"checkpoint-\d+/", name)), key=lambda n: int(n[11:])
    )
    if checkpoints:
        raise FileNotFoundError(
            f"{folder} has no config.json; it is a training run's folder with checkpoints {checkpoints}: pass one of "
            f"them, e.g. {os.path.join(folder, checkpoints[-1])}"
        )
    shown = found[:12] + ([f"... ({len(found) - 12} more)"] if len(found) > 12 else [])
    raise FileNotFoundError(
        f"{folder} has no config.json, so it is not a saved model (found: {shown or 'an empty folder'}); "
        + ACCEPTED_MODELS
    )


def check_model_type(name: str, model_type: str, config: dict | None = None) -> None:
    """Raise a `ValueError` naming what `name` is if it is neither a Mirage nor a Qwen2.5-VL checkpoint."""
    if model_type in MODEL_TYPES:
        return
    architectures = (config or {}).get("architectures")
    raise ValueError(
        f"{name} is a {model_type or 'unknown'!r} checkpoint (config.json model_type {model_type!r}, architectures "
        f"{architectures}); expected a Mirage checkpoint (model_type 'mirage') or a Qwen2.5-VL one to convert "
        "(model_type 'qwen2_5_vl', e.g. Qwen/Qwen2.5-VL-7B-Instruct)"
    )


def resolve_model_path(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """`"tiny"` -> the embedded tiny base's folder (built once, cached in `cache_dir` if given); `"tiny-pretrained"` ->
    the shipped stage-0 base (`mirage_tiny/pretrained`); a local folder or a Hub id as is.

    A name that is no existing folder but looks like a path (`./run`, `outputs/stage1` when `outputs/` exists, a name
    that is no valid Hub id) raises `FileNotFoundError` at once instead of going to the Hub; a folder without a
    loadable `config.json` raises an error that says what the folder holds (see [`check_model_folder`]).

    Under several processes the main process builds the tiny base first into a shared cache (default: a folder in the
    system's temporary directory; on several machines pass a `cache_dir` on a shared file system) and the others
    reuse it: once torch.distributed is up, `save_pretrained` writes weights on rank 0 only, so a build on another rank
    would leave a folder without them.
    """
    name = os.path.expanduser(str(name_or_path))
    if name == TINY_PRETRAINED:
        from mirage_tiny import pretrained_base_path  # a repository fixture, imported only when asked for

        return pretrained_base_path()
    if name != TINY_BASE:
        if os.path.isdir(name):
            check_model_folder(name)
        elif os.path.exists(name):
            raise NotADirectoryError(f"{name} is a file, not a model folder; " + ACCEPTED_MODELS)
        elif _looks_like_path(name):
            raise FileNotFoundError(
                f"model folder {name} does not exist ({os.path.abspath(name)}); " + ACCEPTED_MODELS
            )
        return name
    from mirage_tiny import tiny_base_path  # a repository fixture, imported only when asked for

    state = PartialState()
    if state.num_processes == 1:
        return tiny_base_path(cache_dir)
    cache_dir = cache_dir if cache_dir is not None else Path(tempfile.gettempdir(), "mirage-tiny-base")
    with state.main_process_first():
        return tiny_base_path(cache_dir)


def checkpoint_model_type(path: str, **hub_kwargs) -> str:
    """The `model_type` of a checkpoint's config, read without importing any remote code. A Hub id that cannot be
    read raises an `OSError` that says the name is no local folder either."""
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, **hub_kwargs)
    except OSError as error:
        if os.path.isdir(path):
            raise
        raise OSError(
            f"{path!r} is no local folder, and as a Hub id it could not be read ({error}); {ACCEPTED_MODELS}"
        ) from error
    return config_dict.get("model_type", "")


def is_mirage(model) -> bool:
    """Whether `model` (possibly PEFT-wrapped) is a Mirage model, by `config.model_type`."""
    return getattr(getattr(model, "config", None), "model_type", None) == "mirage"


def load_model_and_processor(
    name_or_path: str,
    latent_num_tokens: int | None = None,
    tiny_cache_dir: str | os.PathLike | None = None,
    image_scale: float | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[MirageForConditionalGeneration, MirageProcessor]:
    """Load a Mirage checkpoint, or convert a Qwen2.5-VL one (stock, or official Mirage with the tokens already added).

    Args:
        name_or_path: folder or Hub id; `"tiny"` for the embedded tiny base.
        latent_num_tokens: k. For a conversion it sets k (default 4); for a Mirage checkpoint it must equal the
            checkpoint's k (None: accept the checkpoint's).
        image_scale: the processor's image resize factor. For a conversion it sets it (default None: no resize); for
            a Mirage checkpoint it must equal the saved processor's (None: accept the saved one).
        tiny_cache_dir: where to keep the tiny base between processes (None: a temporary folder).
        from_pretrained_kwargs: passed to `from_pretrained` (`dtype`, `revision`, `attn_implementation`, ...).
    """
    path = resolve_model_path(name_or_path, tiny_cache_dir)
    hub_kwargs = {
        k: from_pretrained_kwargs[k] for k in ("revision", "token", "cache_dir") if k in from_pretrained_kwargs
    }
    model_type = checkpoint_model_type(path, **hub_kwargs)
    if model_type == "mirage":
        processor = MirageProcessor.from_pretrained(path, **hub_kwargs)
        model = MirageForConditionalGeneration.from_pretrained(path, **from_pretrained_kwargs)
        # The processor's own load checks its k against config.json where it can read it; this covers every source.
        check_latent_num_tokens_match(model.config, processor, f"{name_or_path!r}")
        if latent_num_tokens is not None and latent_num_tokens != model.config.latent_num_tokens:
            raise ValueError(
                f"{name_or_path!r} is a Mirage checkpoint with latent_num_tokens={model.config.latent_num_tokens}, "
                f"but latent_num_tokens={latent_num_tokens} was asked for; k is fixed once a model is converted"
            )
        check_saved_image_scale(processor, image_scale, repr(name_or_path))
    elif model_type == "qwen2_5_vl":
        k = 4 if latent_num_tokens is None else latent_num_tokens
        processor = MirageProcessor.from_base(path, latent_num_tokens=k, image_scale=image_scale, **hub_kwargs)
        model = MirageForConditionalGeneration.from_base(
            path, latent_num_tokens=k, processor=processor, **from_pretrained_kwargs
        )
    else:
        check_model_type(repr(name_or_path), model_type)
    return model, processor


def check_saved_image_scale(processor, image_scale: float | None, where: str) -> None:
    """Raise a `ValueError` if `image_scale` is set (not None) and differs from the processor's own setting.

    A model is trained and used with the resize its processor carries; it is chosen once, when a Qwen2.5-VL checkpoint
    is converted, and travels with the processor from then on. A different value asked for later would train (or
    evaluate) on images of another size than the saved processor feeds, so it is refused rather than applied.
    """
    if image_scale is None:
        return
    if check_image_scale(image_scale) != processor.image_scale:
        raise ValueError(
            f"{where}: image_scale={image_scale} was asked for, but the model's processor has "
            f"image_scale={processor.image_scale} (saved in its processor_config.json); the resize is chosen when a "
            "model is converted (MirageProcessor.from_base(..., image_scale=...)) and travels with the processor. "
            "Leave image_scale unset (None) to use the processor's"
        )


def _backbone(model):
    """The Mirage backbone (`MirageModel`, which owns `visual` and `language_model`) of a plain or PEFT model."""
    if isinstance(model, PeftModel):
        model = model.get_base_model()
    return model.model


def freeze_vision_tower(model) -> int:
    """Stop gradients into the vision tower (patch merger included); returns the number of parameters frozen."""
    frozen = 0
    for parameter in _backbone(model).visual.parameters():
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen


def language_model_lora_config(
    r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: list[str] | str | None = None,
    **kwargs: Any,
) -> LoraConfig:
    """A LoRA config whose adapters sit on the language model's projections only.

    `target_modules` as a list of module names is restricted to the language model (the vision blocks also have
    `gate_proj`/`up_proj`/`down_proj`); a string is taken as the user's own regex. Other `kwargs` go to `LoraConfig`.
    """
    if target_modules is None or (not isinstance(target_modules, str) and list(target_modules) == ["all-linear"]):
        target_modules = list(LANGUAGE_MODEL_PROJECTIONS)
    if not isinstance(target_modules, str):
        names = "|".join(sorted(set(target_modules)))
        target_modules = rf".*language_model.*\.({names})"
    kwargs.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules, bias="none", **kwargs
    )


def lora_config_from(model_args) -> LoraConfig | None:
    """The language-model LoRA config a TRL `ModelConfig` asks for (`--use_peft` and its `lora_*` options), or None."""
    if not model_args.use_peft:
        return None
    return language_model_lora_config(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
    )


def merge_lora(model):
    """The model with its LoRA adapters merged into the weights (a PEFT model), or `model` itself."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def save_for_hub(model, processor, output_dir: str | os.PathLike) -> Path:
    """Write a folder that `AutoModel`/`AutoProcessor.from_pretrained(dir, trust_remote_code=True)` load: merged
    weights in safetensors, the processor, the flat remote-code files and `auto_map`. Returns the folder."""
    output = Path(output_dir)
    model = merge_lora(model)
    if not is_mirage(model):
        raise ValueError(
            f"save_for_hub expects a Mirage model (config.model_type 'mirage'), got {type(model).__name__}"
        )
    # A processor with another k than the model would write latent blocks the model does not read as one.
    check_latent_num_tokens_match(model.config, processor, f"save_for_hub({str(output)!r})")
    model.save_pretrained(output, safe_serialization=True)
    processor.save_pretrained(output)
    check_hub_folder(output)
    return output


def check_hub_folder(folder: str | os.PathLike) -> None:
    """Raise a `FileNotFoundError`/`ValueError` if `folder` lacks what remote-code loading needs."""
    folder = Path(folder)
    if not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} has no safetensors weights")
    missing = [name for name in (*REMOTE_CODE_FILES, "config.json") if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: the remote-code files did not travel with the weights")
    config, _ = PretrainedConfig.get_config_dict(str(folder))
    auto_map = config.get("auto_map") or {}
    for auto_class in ("AutoConfig", "AutoModel", "AutoModelForImageTextToText"):
        if auto_class not in auto_map:
            raise ValueError(f"{folder}/config.json: auto_map lacks {auto_class} (has {sorted(auto_map)})")


def load_checkpoint_weights(model, folder: str | os.PathLike) -> None:
    """Load the safetensors weights of a saved checkpoint (one file or an index of shards) into `model`, in place.

    transformers 5 writes Qwen2.5-VL-family weights under their original Hub names (`model.layers.*`, `visual.*`)
    and renames them only inside `from_pretrained`; a plain `load_state_dict` of the file (what `Trainer` does when
    it resumes) matches nothing and silently keeps the current weights. Here every key goes through the model's own
    conversion table first, and any key left over is an error.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder} has no model.safetensors (or shard index)")
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    if len(renamings) != len(transforms):
        raise NotImplementedError(f"{type(model).__name__} has weight conversions beyond renaming: {transforms}")
    state_dict: dict[str, torch.Tensor] = {}
    for name in files:
        for key, tensor in safetensors.torch.load_file(folder / name, device="cpu").items():
            state_dict[rename_source_key(key, renamings, [])[0]] = tensor
    result = model.load_state_dict(state_dict, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [key for key in result.missing_keys if key not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{folder} does not match {type(model).__name__}: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}"
        )
