"""Model and dataset cards: templates, rendering and pushing to the Hub."""

from .dataset_card import push_dataset_with_card, render_dataset_card
from .model_card import push_model_folder, render_model_card, write_model_card

__all__ = [
    "push_dataset_with_card",
    "push_model_folder",
    "render_dataset_card",
    "render_model_card",
    "write_model_card",
]
