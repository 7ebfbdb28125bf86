"""Generators: variants, determinism, balance, disjoint splits, official-map exclusion, bad arguments, corpus."""

import collections
import io
import re
import time

import numpy as np
import pytest

import mirage_tasks
from mirage_tasks import LATENT_PLACEHOLDER, LevelError, UnknownNameError
from mirage_tasks.dataset import row_key
from mirage_tasks.templates import COT_SUFFIX, DIRECT_SUFFIX
from mirage_tasks.verifiers import row_errors
from mirage_tasks.vsp import map_key, render_map


def _pixels(image):
    return np.asarray(image).tobytes()


@pytest.mark.parametrize("task", mirage_tasks.TASKS)
@pytest.mark.parametrize("variant", mirage_tasks.VARIANTS)
def test_every_generated_row_verifies(task, variant):
    rows = mirage_tasks.make_examples(task, variant, 40, levels="3-8", seed=11)
    for row in rows:
        assert row_errors(row) == [], (row["id"], mirage_tasks.completion_text(row))
        text = mirage_tasks.completion_text(row)
        assert text.count(LATENT_PLACEHOLDER) == len(row["helper_images"]) == (1 if "mirage" in variant else 0)
        assert ("<think>" in text) == variant.endswith("cot")
        assert mirage_tasks.prompt_text(row).endswith(COT_SUFFIX if variant.endswith("cot") else DIRECT_SUFFIX)


def test_reasoning_with_official_style_random_helper_step_verifies():
    rows = mirage_tasks.make_examples("vsp_reasoning", "mirage-cot", 60, levels="3-6", helper_step="random")
    assert all(row_errors(r) == [] for r in rows)
    # the latent block sits after the k-th move clause, not always at the end
    assert any(mirage_tasks.completion_text(r).split(LATENT_PLACEHOLDER)[1].count(" to ") for r in rows)


def test_row_layout_is_trl_conversational():
    row = mirage_tasks.make_examples("vsp_planning", "mirage-cot", 1, levels=4)[0]
    (user,) = row["prompt"]
    assert user["role"] == "user"
    assert [c["type"] for c in user["content"]] == ["text", "image", "text"]
    assert user["content"][1] == {"type": "image", "text": None}
    assert user["content"][0]["text"].endswith("Here is the map: ")
    assert "<image>" not in user["content"][0]["text"] + user["content"][2]["text"]
    assert row["completion"][0]["role"] == "assistant"
    assert row["level"] == 4 and len(row["map_desc"]) == 4 and row["plan"] == ""
    assert row["id"] == "vsp_planning-0-00000"


def test_official_layouts_of_completions():
    for variant, pattern in [
        ("direct", r"^The answer is \\boxed\{[LRUD]+\}\.$"),
        ("mirage-direct", r"^<output_image>The answer is \\boxed\{[LRUD]+\}\.$"),
        ("cot", r"^<think> .+ </think>The answer is \\boxed\{[LRUD]+\}\.$"),
        ("mirage-cot", r"^<think> .+ </think><output_image><think> .+ </think>The answer is \\boxed\{[LRUD]+\}\.$"),
    ]:
        assert re.match(
            pattern, mirage_tasks.completion_text(mirage_tasks.make_examples("vsp_planning", variant, 1)[0])
        )


def test_helper_images_are_what_the_model_should_imagine():
    planning = mirage_tasks.make_examples("vsp_planning", "mirage-direct", 1, levels=5)[0]
    assert _pixels(planning["images"][0]) == _pixels(render_map(planning["map_desc"]))
    assert _pixels(planning["helper_images"][0]) != _pixels(planning["images"][0])
    reasoning = mirage_tasks.make_examples("vsp_reasoning", "mirage-direct", 3, levels=5)
    for row in reasoning:  # decisive step = the final state; the map is read back from it unchanged
        assert mirage_tasks.map_from_image(row["helper_images"][0]) == row["map_desc"]
    assert mirage_tasks.map_from_image(reasoning[1]["helper_images"][0]) is not None  # B: the player is in a hole
    jigsaw = mirage_tasks.make_examples("jigsaw", "mirage-direct", 1)[0]
    assert jigsaw["helper_images"][0].size == jigsaw["images"][0].size
    assert _pixels(jigsaw["helper_images"][0]) != _pixels(jigsaw["images"][0])


@pytest.mark.parametrize("task", mirage_tasks.TASKS)
def test_same_seed_same_data_and_variants_share_problems(task):
    a = mirage_tasks.make_examples(task, "mirage-cot", 12, seed=5)
    b = mirage_tasks.make_examples(task, "mirage-cot", 12, seed=5)
    direct = mirage_tasks.make_examples(task, "direct", 12, seed=5)
    other = mirage_tasks.make_examples(task, "mirage-cot", 12, seed=6)
    for x, y, z in zip(a, b, direct):
        assert (
            mirage_tasks.completion_text(x) == mirage_tasks.completion_text(y)
            and x["answer"] == y["answer"] == z["answer"]
        )
        assert _pixels(x["images"][0]) == _pixels(y["images"][0]) == _pixels(z["images"][0])
        assert _pixels(x["helper_images"][0]) == _pixels(y["helper_images"][0])
    assert [_pixels(r["images"][0]) for r in a] != [_pixels(r["images"][0]) for r in other]


def test_levels_and_answers_are_balanced():
    rows = mirage_tasks.make_examples("vsp_reasoning", "direct", 72, levels="3-6")
    counts = collections.Counter((r["level"], r["answer"]) for r in rows)
    assert set(counts.values()) == {6} and len(counts) == 12
    jig = collections.Counter(
        (r["level"], r["answer"]) for r in mirage_tasks.make_examples("jigsaw", "direct", 16, levels="3-6")
    )
    assert set(jig.values()) == {2} and len(jig) == 8
    plan = collections.Counter(
        r["level"] for r in mirage_tasks.make_examples("vsp_planning", "direct", 12, levels=[3, 8])
    )
    assert plan == {3: 6, 8: 6}


@pytest.mark.parametrize("task", ["vsp_planning", "vsp_reasoning"])
def test_splits_are_disjoint_and_avoid_official_test_maps(task):
    official = mirage_tasks.official_test_maps()
    official_keys = {map_key(m) for m in official}
    splits = mirage_tasks.build_splits(task, "mirage-direct", 300, 100, levels="3-4", seed=0, exclude=official)
    train = [row_key(r) for r in splits["train"]]
    test = [row_key(r) for r in splits["test"]]
    assert len(set(train)) == 300 and len(set(test)) == 100
    assert not set(train) & set(test)
    assert not (set(train) | set(test)) & official_keys


def test_without_exclusion_small_levels_do_hit_official_maps():
    """The exclusion above is not vacuous: unconstrained 3x3 generation reproduces official test maps."""
    official_keys = {map_key(m) for m in mirage_tasks.official_test_maps()}
    keys = {row_key(r) for r in mirage_tasks.make_examples("vsp_planning", "direct", 300, levels=3)}
    assert keys & official_keys


def test_jigsaw_splits_are_disjoint():
    splits = mirage_tasks.build_splits("jigsaw", "direct", 60, 30, levels=3)
    train = {_pixels(r["images"][0]) for r in splits["train"]}
    test = {_pixels(r["images"][0]) for r in splits["test"]}
    assert len(train) == 60 and len(test) == 30 and not train & test


def test_dataset_has_canonical_schema_and_images_survive():
    rows = mirage_tasks.make_examples("vsp_planning", "mirage-direct", 3)
    ds = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 3)
    assert ds.features == mirage_tasks.FEATURES
    assert [_pixels(r["images"][0]) for r in ds] == [_pixels(r["images"][0]) for r in rows]
    assert ds[0]["prompt"][0]["content"][1] == {"type": "image", "text": None}
    png = mirage_tasks.dataset.encode_image(rows[0]["images"][0])["bytes"]
    assert png.startswith(b"\x89PNG") and io.BytesIO(png)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: mirage_tasks.make_examples("maze", "direct", 1), UnknownNameError, "unknown task 'maze'"),
        (lambda: mirage_tasks.make_examples("jigsaw", "mirage", 1), UnknownNameError, "unknown variant 'mirage'"),
        (
            lambda: mirage_tasks.make_examples("vsp_planning", "direct", 1, levels=2),
            LevelError,
            "levels must lie in 3-8",
        ),
        (lambda: mirage_tasks.make_examples("vsp_planning", "direct", 1, levels="3-9"), LevelError, r"got \[9\]"),
        (
            lambda: mirage_tasks.make_examples("jigsaw", "direct", 1, levels=9),
            LevelError,
            "jigsaw levels must lie in 3-8",
        ),
        (lambda: mirage_tasks.make_examples("vsp_reasoning", "direct", 1, levels="three"), LevelError, "cannot read"),
        (lambda: mirage_tasks.make_examples("vsp_planning", "direct", -1), ValueError, "n must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_exhausted_level_says_so():
    everything = {row_key(r) for r in mirage_tasks.make_examples("vsp_planning", "direct", 50, levels=3)}
    with pytest.raises(ValueError, match="could not draw a new vsp_planning problem at level 3"):
        mirage_tasks.make_examples("vsp_planning", "direct", 5, levels=3, exclude=everything, max_tries=3)


def test_vocabulary_corpus_is_fast_deterministic_and_covers_generated_text():
    start = time.perf_counter()
    corpus = mirage_tasks.vocabulary_corpus()
    assert time.perf_counter() - start < 1.0
    assert corpus == mirage_tasks.vocabulary_corpus()
    words = set(re.findall(r"\S+", " ".join(corpus)))
    chars = set("".join(corpus))
    for task in mirage_tasks.TASKS:
        for variant in mirage_tasks.VARIANTS:
            for row in mirage_tasks.make_examples(task, variant, 30, levels="3-8", seed=2):
                text = mirage_tasks.prompt_text(row) + mirage_tasks.completion_text(row)
                assert set(text) <= chars
                missing = {w for w in re.findall(r"\S+", mirage_tasks.completion_text(row)) if w not in words}
                # a planning answer is a fresh move string; every other token appears verbatim in the corpus
                assert all(re.fullmatch(r"\\boxed\{[LRUD]+\}\.", w) for w in missing), missing


def test_a_clause_holding_the_latent_placeholder_is_a_data_error():
    from mirage_tasks.dataset import to_row
    from mirage_tasks.sample import Sample

    image = render_map([[1, 0], [0, 2]])
    sample = Sample("k", "<image>{suffix}", image, lambda: image, [f"see {LATENT_PLACEHOLDER}"], [], "DR", 2)
    assert to_row(sample, "vsp_planning", "direct", "x")["helper_images"] == []  # the clause is not written
    for variant, counts in [("cot", "1 <output_image> placeholders for 0"), ("mirage-cot", "2 <output_image> placeholders for 1")]:  # fmt: skip
        with pytest.raises(mirage_tasks.TaskDataError, match=f"row x field 'completion': {counts} helper images"):
            to_row(sample, "vsp_planning", variant, "x")


def test_an_empty_split_keeps_the_schema():
    empty = mirage_tasks.rows_to_dataset([])
    assert len(empty) == 0 and empty.features == mirage_tasks.FEATURES
