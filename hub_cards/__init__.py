"""Model and dataset cards: templates, rendering and pushing to the Hub."""

from .dataset_card import push_dataset_with_card, render_dataset_card

__all__ = ["push_dataset_with_card", "render_dataset_card"]
