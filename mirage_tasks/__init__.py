"""The imagery task suite: VSP spatial planning, VSP spatial reasoning and jigsaw, with helper images.

Generators produce problems in the official style (FrozenLake maps rendered pixel-exactly as gymnasium 0.29.1
draws them), laid out in each of the paper's four training variants as TRL conversational rows; readers and writers
handle the official JSONL format; verifiers score answers by simulation; ``evaluate`` metrics live in
:data:`METRICS_DIR`. The official VSP spatial-planning test ships with the package
(:func:`load_official_planning_test`, :func:`official_test_maps`). See ``docs/tasks.md``.
"""

from pathlib import Path

from .corpus import vocabulary_corpus
from .dataset import (
    DEFAULT_LEVELS,
    FEATURES,
    LEVEL_RANGE,
    TASKS,
    build_dataset,
    build_splits,
    completion_text,
    exclusion_keys,
    make_examples,
    parse_levels,
    prompt_text,
    rows_to_dataset,
)
from .errors import LevelError, TaskDataError, UnknownNameError
from .official import (
    load_official_planning_test,
    load_official_reasoning_samples,
    official_data_root,
    official_path,
    official_test_maps,
    read_official_jsonl,
    write_official_jsonl,
)
from .templates import LATENT_PLACEHOLDER
from .variants import VARIANTS
from .verifiers import (
    evaluate_predictions,
    extract_boxed,
    extract_choice,
    format_ok,
    planning_outcome,
    row_errors,
    score_choice,
    score_format,
    score_planning,
    score_row,
)
from .vsp import (
    map_from_image,
    map_key,
    read_map_image,
    render_map,
    simulate_plan,
    solve_map,
    validate_map_desc,
)

METRICS_DIR = Path(__file__).parent / "metrics"
"""Folder of the ``evaluate`` metric modules: ``evaluate.load(str(METRICS_DIR / "vsp_planning"))``."""
VSP_PLANNING_METRIC = str(METRICS_DIR / "vsp_planning")
"""Path to pass to ``evaluate.load`` for the planning metric (success, invalid and per-level rates)."""
MULTIPLE_CHOICE_METRIC = str(METRICS_DIR / "multiple_choice")
"""Path to pass to ``evaluate.load`` for the multiple-choice metric (reasoning and jigsaw accuracy)."""

__all__ = [
    "DEFAULT_LEVELS",
    "FEATURES",
    "LATENT_PLACEHOLDER",
    "LEVEL_RANGE",
    "METRICS_DIR",
    "MULTIPLE_CHOICE_METRIC",
    "TASKS",
    "VARIANTS",
    "VSP_PLANNING_METRIC",
    "LevelError",
    "TaskDataError",
    "UnknownNameError",
    "build_dataset",
    "build_splits",
    "completion_text",
    "evaluate_predictions",
    "exclusion_keys",
    "extract_boxed",
    "extract_choice",
    "format_ok",
    "load_official_planning_test",
    "load_official_reasoning_samples",
    "make_examples",
    "map_from_image",
    "map_key",
    "official_data_root",
    "official_path",
    "official_test_maps",
    "parse_levels",
    "planning_outcome",
    "prompt_text",
    "read_map_image",
    "read_official_jsonl",
    "render_map",
    "row_errors",
    "rows_to_dataset",
    "score_choice",
    "score_format",
    "score_planning",
    "score_row",
    "simulate_plan",
    "solve_map",
    "validate_map_desc",
    "vocabulary_corpus",
    "write_official_jsonl",
]
