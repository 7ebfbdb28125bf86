"""Rewrite the model card of a saved Mirage folder from a new evaluation, and optionally push the page.

    python examples/evaluate_mirage.py --model outputs/demo/mirage-tiny-vsp --data official --output-dir outputs/eval
    python examples/update_model_card.py --model-dir outputs/demo/mirage-tiny-vsp --results outputs/eval \\
        [--push-to-hub user/mirage-tiny-vsp [--private true] [--hub-token TOKEN]]

The results must have been measured on this model (its config hash is recorded in ``results.json``); they are copied
into ``<model-dir>/eval/`` with their figures, and the card's ``model-index``, results tables, figures and example
outputs are rebuilt from them. Base model, training data and recipe are kept from the card already in the folder.
``--push-to-hub`` then uploads the page (weights, processor, remote code, generation config, card, results, figures,
the snippet's example) in one commit, after checking that the folder is complete. The token comes from
``--hub-token`` or the environment (``HF_TOKEN``, or ``hf auth login``) and is never printed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hub_cards import model_page_files, push_model_folder, write_model_card


@dataclass
class UpdateCardArguments:
    """Command-line options of ``update_model_card.py``."""

    model_dir: str = field(metadata={"help": "Saved Mirage model folder whose card is rewritten."})
    results: str | None = field(
        default=None,
        metadata={"help": "results.json, or the --output-dir of evaluate_mirage.py (None: keep the folder's eval/)."},
    )
    repo_id: str | None = field(
        default=None,
        metadata={"help": "Id shown in the card's snippet (default: --push-to-hub, else the folder name)."},
    )
    notes: str | None = field(default=None, metadata={"help": "A line added to the card's limitations."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub model repo id to push the page to."})
    private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token with write access (default: $HF_TOKEN or the saved login)."}
    )


def main(argv: list[str] | None = None):
    """Run the command line; returns the pushed commit's info (None without ``--push-to-hub``)."""
    (args,) = HfArgumentParser(UpdateCardArguments).parse_args_into_dataclasses(args=argv)
    repo_id = args.repo_id or args.push_to_hub
    card_kwargs = {"repo_id": repo_id} if repo_id else {}
    if args.notes:
        card_kwargs["notes"] = args.notes
    path = write_model_card(args.model_dir, results=args.results, **card_kwargs)
    files = model_page_files(args.model_dir)  # a complete page, or an error naming what is missing
    print(f"wrote {path}; the page has {len(files)} files: {', '.join(files)}", file=sys.stderr)
    if not args.push_to_hub:
        return None
    commit = push_model_folder(args.model_dir, args.push_to_hub, private=args.private, token=args.hub_token,
                               commit_message="Update model card and evaluation results")  # fmt: skip
    print(f"pushed to https://huggingface.co/{args.push_to_hub}", file=sys.stderr)
    return commit


if __name__ == "__main__":
    main()
