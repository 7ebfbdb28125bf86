"""Model and dataset cards: templates, rendering, and the commits that push them to the Hub."""

from .dataset_card import push_dataset_with_card, render_dataset_card
from .model_card import (
    IncompleteModelFolderError,
    ResultsMismatchError,
    check_results_match,
    model_index,
    model_page_files,
    push_model_folder,
    render_model_card,
    write_model_card,
)

__all__ = [
    "IncompleteModelFolderError",
    "ResultsMismatchError",
    "check_results_match",
    "model_index",
    "model_page_files",
    "push_dataset_with_card",
    "push_model_folder",
    "render_dataset_card",
    "render_model_card",
    "write_model_card",
]
