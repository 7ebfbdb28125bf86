"""Hub pages from the trainers: [`MirageHubMixin`] makes a TRL trainer write the Mirage model card and upload exactly
the model page's files, whichever way it pushes.

    class MirageGRPOTrainer(MirageHubMixin, GRPOTrainer): ...

* `create_model_card` is TRL's hook (`_BaseTrainer.create_model_card`): `Trainer.push_to_hub` calls it before
  uploading, and TRL's `_save_checkpoint` before every checkpoint. The override writes the Mirage card
  (`hub_cards.render_model_card`) in place of TRL's generic one, so there is never a second README.
* `push_to_hub` and `_push_from_checkpoint` run the parent's code unchanged (saving, card, repository, checkpoint
  pushes for `hub_strategy`); only the upload of `output_dir` itself goes through `hub_cards.commit_model_page`: one
  commit of the page files (`hub_cards.model_page_files`), checked before anything is sent. `Trainer` would upload
  every file of `output_dir` but `checkpoint-*` (e.g. `training_args.bin`, a pickle of the arguments with any
  token, logs, a LoRA run's `mirage-base/`). The checkpoint folder itself is still pushed, as `Trainer` does, when
  `hub_strategy` is `checkpoint` or `all_checkpoints` (that is how a user asks for resumable, optimizer-carrying
  pushes), less its `training_args.bin` (it would publish `hub_token`).
* `train` records the stage on the model, so a later stage's card lists the recipe of every stage before it.

The card reads `<output_dir>/eval/results.json` when there is one (`examples/evaluate_mirage.py --model OUT
--output-dir OUT/eval`), after checking that it was measured on this model (config hash).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from hub_cards.model_card import (
    EVAL_DIR,
    commit_model_page,
    previous_card_data,
    remote_code_files,
    write_model_card,
)

LINEAGE_ATTRIBUTE = "_mirage_card_lineage"
"""Attribute of the (unwrapped) model that carries the base model, datasets and stages of earlier training runs."""


def training_lineage(model) -> dict[str, Any] | None:
    """What the trainers recorded on `model` (PEFT-wrapped or not): `base_model`, `datasets` and `stages` (one dict per
    training run, in order), as the model card shows them; None if no trainer of this project trained it here."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(model, LINEAGE_ATTRIBUTE, None)


class _PageUploads:
    """Stands in for transformers' shared `HfApi` while a parent push runs: the upload of `output_dir` becomes one
    commit of its page files; every other call (repository creation, checkpoint-folder uploads) goes through."""

    def __init__(self, api, folder: str):
        self.api, self.folder, self.page_commits = api, Path(folder).resolve(), 0

    def upload_folder(self, *, folder_path, path_in_repo=None, **kwargs):
        if path_in_repo is None and Path(folder_path).resolve() == self.folder:
            self.page_commits += 1
            return commit_model_page(
                self.api,
                folder_path,
                kwargs["repo_id"],
                token=kwargs.get("token"),
                revision=kwargs.get("revision"),
                commit_message=kwargs.get("commit_message") or "Upload Mirage model",
                run_as_future=kwargs.get("run_as_future", False),
            )
        # A checkpoint folder pushed for hub_strategy "checkpoint" / "all_checkpoints": as `Trainer` sends it (optimizer
        # and scheduler states are what those strategies are for), but without `training_args.bin`, a pickle of the
        # arguments that holds `hub_token`; resuming does not read it.
        ignore = kwargs.pop("ignore_patterns", None)
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        return self.api.upload_folder(
            folder_path=folder_path,
            path_in_repo=path_in_repo,
            ignore_patterns=[*ignore, "training_args.bin"],
            **kwargs,
        )

    def __getattr__(self, name):
        return getattr(self.api, name)


class MirageHubMixin:
    """Put before the TRL trainer class in the bases: Mirage model cards and page-only uploads (see the module
    docstring). `hub_datasets` (a list of dataset ids or names) is added to the card's training data."""

    hub_datasets: list[str] | None = None

    # ---- what the card says ---------------------------------------------------------------------------------------

    def _unwrapped_model(self):
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _card_lineage(self) -> dict[str, Any]:
        """Base model, datasets and stages of the runs that produced the starting weights: recorded on the model by
        an earlier trainer in this process, else read from the card of the checkpoint it was loaded from."""
        cached = getattr(self, "_lineage_before", None)
        if cached is not None:  # as it was before this trainer trained: `train` records this stage on the model
            return cached
        model = self._unwrapped_model()
        lineage = getattr(model, LINEAGE_ATTRIBUTE, None)
        if lineage is None:
            start = getattr(model.config, "_name_or_path", None)
            card = previous_card_data(start) if start and Path(start).is_dir() else {}
            lineage = {
                "base_model": card.get("base_model") or start or "unknown",
                "datasets": list(card.get("datasets") or []),
                "stages": list((card.get("mirage") or {}).get("training_stages") or []),
            }
        self._lineage_before = lineage
        return lineage

    def _stage_summary(self) -> dict[str, Any]:
        """This run as one row of the card's recipe table."""
        args, state = self.args, self.state
        stage = getattr(args, "latent_stage", None)
        name = f"stage {stage}" if stage in (1, 2) else self._name
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        rows = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None
        return {
            "stage": name,
            "steps": state.global_step or args.max_steps,
            "effective batch": batch,
            "learning rate": args.learning_rate,
            "training rows": rows if rows is not None else "streamed",
        }

    def _example_row(self):
        """The first training row (prompt and image), as the card's usage example; None if it has no image."""
        dataset = self.train_dataset
        try:
            row = dataset[0] if hasattr(dataset, "__getitem__") else next(iter(dataset))
        except (IndexError, StopIteration, TypeError):
            return None
        return row if row.get("images") and row.get("prompt") else None

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the Mirage model card to `output_dir/README.md` (TRL's hook, same arguments; TRL's generic card is not
        written). `dataset_name` adds training data; `tags` more tags. More `kwargs` (e.g. `results=` a results.json,
        `notes=`) go to `hub_cards.write_model_card`; with no `results`, `<output_dir>/eval/results.json` is used if
        present. Only on the main process."""
        if not self.is_world_process_zero():
            return
        lineage = self._card_lineage()
        datasets = list(lineage["datasets"])
        for name in [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or []):
            datasets += [] if name in datasets else [name]
        datasets += [name for name in (self.hub_datasets or []) if name not in datasets]
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [tag for tag in self._tag_names if tag not in tags]
        repo_id = getattr(self, "hub_model_id", None) or self.args.hub_model_id or model_name
        folder = Path(self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("example_row", self._example_row())
        if kwargs.get("results") is None and (folder / EVAL_DIR / "results.json").is_file():
            kwargs["results"] = folder / EVAL_DIR
        write_model_card(
            folder,
            config=self._unwrapped_model().config,
            repo_id=repo_id or folder.resolve().name,
            base_model=lineage["base_model"],
            datasets=datasets,
            training_stages=[*lineage["stages"], self._stage_summary()],
            tags=tags,
            **kwargs,
        )

    def train(self, *args, **kwargs):
        """`Trainer.train`, then this stage is recorded on the model for the cards of later stages.

        Refuses, before training, to push adapter checkpoints during training (`push_to_hub` with a PEFT model and a
        `hub_strategy` other than `end`): a LoRA checkpoint is no complete Mirage model, so its page would be refused
        at the first save; the merged model is pushed at the end instead (`examples/sft_mirage.py` does).
        """
        model = self.accelerator.unwrap_model(self.model)
        strategy = getattr(self.args.hub_strategy, "value", self.args.hub_strategy)
        if self.args.push_to_hub and strategy != "end" and hasattr(model, "get_base_model"):
            raise ValueError(
                f"push_to_hub with LoRA adapters and hub_strategy={strategy!r}: the checkpoints hold adapters, not a "
                "complete Mirage model, so they cannot be pushed as a model page; set hub_strategy='end' "
                "(--hub_strategy end) and push the merged model at the end (examples/sft_mirage.py "
                "merges and pushes it; from Python: trainers.save_for_hub, then hub_cards.push_model_folder)"
            )
        lineage = self._card_lineage()
        output = super().train(*args, **kwargs)
        datasets = [name for name in (self.hub_datasets or []) if name not in lineage["datasets"]]
        setattr(
            self._unwrapped_model(),
            LINEAGE_ATTRIBUTE,
            {
                **lineage,
                "datasets": lineage["datasets"] + datasets,
                "stages": lineage["stages"] + [self._stage_summary()],
            },
        )
        return output

    # ---- what is uploaded -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _page_uploads(self):
        """Route the parent's upload of `output_dir` through `hub_cards.commit_model_page` (see `_PageUploads`)."""
        import transformers.trainer as trainer_module

        shared = trainer_module.hf_api
        proxy = _PageUploads(shared(), self.args.output_dir)
        trainer_module.hf_api = lambda: proxy
        try:
            yield proxy
        finally:
            trainer_module.hf_api = shared

    def push_to_hub(self, *args, **kwargs):
        """`Trainer.push_to_hub` (save, card, upload), the upload being the model page only: one commit of
        `hub_cards.model_page_files(output_dir)`, checked before anything is sent. `dataset_name=`, `tags=` and
        other card arguments are passed to `create_model_card`."""
        with self._page_uploads() as uploads:
            result = super().push_to_hub(*args, **kwargs)
        if self.is_world_process_zero() and uploads.page_commits != 1:
            raise RuntimeError(
                "Trainer.push_to_hub did not upload output_dir through hf_api().upload_folder, so the page filter was "
                "not applied; this transformers version pushes differently (the pinned one is 5.24.0)"
            )
        return result

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """`Trainer._push_from_checkpoint` with the model page as the upload of `output_dir`. The parent copies
        weights and configs from the checkpoint; the remote code, which the page also needs, is copied here."""
        if self.is_world_process_zero() and self.args.hub_strategy != "end":
            for name in remote_code_files(checkpoint_folder):
                shutil.copyfile(Path(checkpoint_folder, name), Path(self.args.output_dir, name))
        with self._page_uploads():
            super()._push_from_checkpoint(checkpoint_folder)
