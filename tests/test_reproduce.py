"""The study script (examples/reproduce.py): every arm gets the same compute, results aggregate to mean ± std over
seeds, the verdict can come out either way, and the docs section is replaced in place."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "examples" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return yaml.safe_load((REPO / "examples" / "recipes" / "tiny" / "study.yaml").read_text())


def test_every_arm_takes_the_same_steps(study, recipe):
    total = recipe["stage1_steps"] + recipe["stage2_steps"]
    arms = [*recipe["arms"], *recipe["ablations"]]
    plans = {arm: study.arm_plan(arm, recipe) for arm in arms}
    assert {arm: sum(s[1] for s in p["stages"]) for arm, p in plans.items()} == dict.fromkeys(arms, total)
    assert [s[0] for s in plans["mirage"]["stages"]] == [1, 2]
    assert [s[0] for s in plans["mirage-no-stage1"]["stages"]] == [2]
    assert [s[0] for s in plans["mirage-no-stage2"]["stages"]] == [1]
    assert (plans["direct"]["variant"], plans["cot"]["variant"]) == ("direct", "cot")
    assert (plans["mirage-k2"]["k"], plans["mirage-k8"]["k"], plans["mirage"]["k"]) == (2, 8, 4)
    assert (plans["mirage-gamma1"]["gamma"], plans["mirage"]["gamma"]) == (1.0, 0.1)
    with pytest.raises(SystemExit, match="unknown arm 'mirage-k3'"):
        study.arm_plan("mirage-k3", recipe)


def test_ablations_run_over_their_own_seeds_after_the_main_arms(study, recipe):
    runs = study.study_runs(recipe)
    main = [(arm, seed) for seed in recipe["seeds"] for arm in recipe["arms"]]
    assert runs[: len(main)] == main and "mirage-grpo" in recipe["arms"]
    assert runs[len(main) :] == [(arm, seed) for seed in recipe["ablation_seeds"] for arm in recipe["ablations"]]
    assert study.study_runs({"seeds": [0, 1], "arms": ["direct"], "ablations": ["mirage-k2"]}) == [
        ("direct", 0), ("direct", 1), ("mirage-k2", 0), ("mirage-k2", 1)
    ]  # fmt: skip


def _record(arm: str, seed: int, rate: float, zero: float = 0.0) -> dict:
    def run(value, difference=None):
        entry = {
            "n": 2,
            "success_rate": value,
            "per_level": {"3": {"success_rate": value}, "4": {"success_rate": value}},
        }
        if difference is not None:
            entry["difference"] = {"value": difference}
        return entry

    runs = {"plain": run(rate)}
    if arm.startswith("mirage"):
        runs |= {name: run(rate + zero, zero) for name in ("zero", "mean", "noise", "shuffle", "oracle")}
    split = {"runs": runs, "baselines": {"best_constant_answer": {"success_rate": 0.13}}}
    return {"arm": arm, "seed": seed, "cpu_seconds": 1.0, "results": {"official": split, "heldout": split}}


def test_aggregate_and_verdict_either_way(study):
    records = [
        _record("direct", 0, 0.40), _record("direct", 1, 0.42),
        _record("cot", 0, 0.20), _record("cot", 1, 0.22),
        _record("mirage", 0, 0.60, zero=-0.2), _record("mirage", 1, 0.62, zero=-0.2),
    ]  # fmt: skip
    table = study.aggregate(records)
    assert table["direct"]["official"]["all"] == pytest.approx((0.41, 0.0141421356))
    assert table["mirage"]["official"]["interventions"]["zero"] == pytest.approx((-0.2, 0.0))
    assert table["direct"]["official"]["interventions"] == {}
    text = study.verdict(table)
    assert "Mirage > Direct > CoT with non-overlapping" in text and "-10 points holds" in text
    section = study.markdown(table, "python examples/reproduce.py", "test machine", 60.0, {
        "base": "tiny-pretrained", "levels": "3-4", "train_examples": 8, "batch_size": 2,
        "stage1_steps": 1, "stage2_steps": 1,
    })  # fmt: skip
    assert "| mirage | 2 | 61.0 ± 1.4 | 61.0 ± 1.4 | 61.0 ± 1.4 |" in section

    # The same study with Direct on top: the verdict says the goal does not hold.
    records[0], records[1] = _record("direct", 0, 0.70), _record("direct", 1, 0.72)
    records[4], records[5] = _record("mirage", 0, 0.60, zero=0.0), _record("mirage", 1, 0.62, zero=0.0)
    text = study.verdict(study.aggregate(records))
    assert "not Mirage > Direct > CoT" in text and "the goal does not hold" in text
    assert "does not hold (larger cost +0.0)" in text


def test_write_docs_replaces_only_its_section(study, tmp_path):
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nother section\n")
    study.write_docs(f"{study.DOCS_START}\nfirst\n{study.DOCS_END}", docs)
    study.write_docs(f"{study.DOCS_START}\nsecond\n{study.DOCS_END}", docs)
    text = docs.read_text()
    assert text.count(study.DOCS_START) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Results\n\nother section\n")


def test_the_grpo_arm_runs_stage_three_and_is_evaluated(study, recipe, tmp_path, one_thread):
    """`mirage-grpo` is `mirage` followed by MirageGRPOTrainer steps, evaluated like every Mirage arm."""
    recipe = dict(
        recipe, base="tiny", train_examples=8, batch_size=2, stage1_steps=1, stage2_steps=1, grpo_steps=2,
        grpo_prompts=4, official_per_level=1, heldout_examples=2, max_new_tokens=12,
    )  # fmt: skip
    record = study.train_and_evaluate("mirage-grpo", 0, recipe, tmp_path)
    assert [(log["stage"], log["steps"]) for log in record["train_logs"]] == [(1, 1), (2, 1), (3, 2)]
    grpo_log = record["train_logs"][2]["log"]
    assert [entry["step"] for entry in grpo_log if "reward" in entry] == [1, 2]
    official = record["results"]["official"]
    assert official["runs"]["plain"]["n"] == 4 and {"zero", "shuffle"} <= set(official["runs"])
