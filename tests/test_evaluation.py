"""The evaluation runner: exact scoring, latent interventions that really change what is fed, consistent outputs,
and bad inputs refused before any generation."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mirage_tasks import evaluation as ev
from mirage_tasks.vsp import parse_moves, simulate_plan

REPO = Path(__file__).resolve().parents[1]
NEG = float("-inf")


class Script(LogitsProcessor):
    """Per row: open a latent block at the first generated step, then (after the block Mirage forces) write
    `\\boxed{<answer>}` and stop. Answers cycle through `answers` by the row's first prompt token, so a row behaves
    the same in any batch."""

    def __init__(self, tokenizer, prompt_length: int, answers: list[str], start_id: int, end_id: int, eos: int):
        self.prompt_length, self.start_id, self.end_id, self.eos = prompt_length, start_id, end_id, eos
        self.answers = [tokenizer.encode(f"\\boxed{{{a}}}", add_special_tokens=False) + [eos] for a in answers]

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_length :]
        out = scores.clone()
        for r, ids in enumerate(generated.tolist()):
            if not ids:
                token = self.start_id
            elif self.end_id not in ids:
                continue  # inside the block: Mirage's own processor forces pads and the end
            else:
                after = ids[ids.index(self.end_id) + 1 :]
                answer = self.answers[r % len(self.answers)]
                token = answer[len(after)] if len(after) < len(answer) else self.eos
            out[r] = NEG
            out[r, token] = 0.0
        return out


@pytest.fixture(scope="module")
def mirage(tiny_mirage_dir):
    from modeling_mirage import MirageForConditionalGeneration, MirageProcessor

    model = MirageForConditionalGeneration.from_pretrained(tiny_mirage_dir).eval()
    return model, MirageProcessor.from_pretrained(tiny_mirage_dir)


@pytest.fixture(scope="module")
def rows():
    return ev.load_rows("official", limit=6)


def scripted(model, processor, rows, answers):
    """generation_kwargs that make every completion a latent block followed by a scripted answer."""
    prompts = [processor.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    processor.tokenizer.padding_side = "left"
    length = processor(text=prompts, images=[r["images"][0] for r in rows], padding=True)["input_ids"]
    width = max(len(ids) for ids in length)
    pad, start, end = model.config.latent_token_ids
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    script = Script(processor.tokenizer, width, answers, start, end, eos)
    return {"logits_processor": LogitsProcessorList([script])}


def test_scoring_is_exact_on_hand_made_completions(rows):
    gold = [r["answer"] for r in rows]
    texts = [
        f"\\boxed{{{gold[0]}}}",  # correct
        "\\boxed{" + "".join({"L": "R", "R": "L", "U": "D", "D": "U"}[m] for m in gold[1]) + "}",  # wrong way
        "no answer at all",  # invalid
        f"<|latent_start|><|latent_pad|><|latent_end|>The answer is \\boxed{{{gold[3]}}}.",  # correct
        "\\boxed{XYZ}",  # invalid
        f"\\boxed{{{gold[5]}}}",  # correct
    ]
    expected = [simulate_plan(r["map_desc"], parse_moves(t.split("boxed{")[-1].split("}")[0]) if "boxed" in t
                              else None) == "success" for r, t in zip(rows, texts)]  # fmt: skip
    scores = ev.score_samples(rows, [texts])
    summary = ev.summarize(rows, scores)
    assert [s["correct"] for s in scores[0]] == expected == [True, False, False, True, False, True]
    assert summary["correct"] == 3 and summary["n"] == 6 and summary["success_rate"] == 0.5
    assert summary["invalid"] == 2
    for level, group in summary["per_level"].items():
        members = [i for i, r in enumerate(rows) if str(r["level"]) == level]
        assert group["n"] == len(members) and group["correct"] == sum(expected[i] for i in members)
    lo, hi = summary["ci95"]
    assert 0.0 < lo < 0.5 < hi < 1.0
    # Paired difference against itself is exactly zero; against an all-wrong run it is minus the rate.
    again = ev.summarize(rows, scores, base=summary)
    assert again["difference"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    wrong = ev.summarize(rows, ev.score_samples(rows, [["\\boxed{}"] * 6]), base=summary)
    assert wrong["difference"]["value"] == pytest.approx(-0.5)


def test_best_constant_answer_is_the_best_single_answer(rows):
    best = ev.best_constant_answer(rows)
    for answer in ["L", "R", "U", "D", "RR", "DD", *[r["answer"] for r in rows]]:
        rate = sum(ev.score_row(r, f"\\boxed{{{answer}}}")["correct"] for r in rows) / len(rows)
        assert rate <= best["success_rate"]


def test_latent_source_feeds_what_it_returns_and_replays_exactly(mirage, rows):
    model, processor = mirage
    batch = rows[:3]
    kwargs = scripted(model, processor, batch, ["R"])
    plain = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs)
    k = model.config.latent_num_tokens
    assert all(latents.shape[0] == k for latents in plain.latents)
    # zero: what was fed is zeros, and the named intervention equals an explicit zero source.
    named = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs,
                                    source_for=ev.intervention_sources("zero", plain, k, seed=0))  # fmt: skip
    explicit = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs,
                                       source_for=lambda idx: lambda h, b, p: torch.zeros_like(h))  # fmt: skip
    assert named.texts == explicit.texts
    for a, b in zip(named.latents, explicit.latents):
        assert torch.equal(a, b) and not a.any()
    # shuffle: each row is fed another row's plain latents, slot by slot.
    shuffled = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs,
                                       source_for=ev.intervention_sources("shuffle", plain, k, seed=0))  # fmt: skip
    order = ev.derangement(len(batch), 0)
    for i, latents in enumerate(shuffled.latents):
        assert torch.allclose(latents, plain.latents[order[i]], atol=1e-6)
        assert not torch.allclose(latents, plain.latents[i])
    # mean: the slot means of the plain run.
    mean = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs,
                                   source_for=ev.intervention_sources("mean", plain, k, seed=0))  # fmt: skip
    expected = torch.stack(plain.latents).mean(dim=0)
    for latents in mean.latents:
        assert torch.allclose(latents, expected, atol=1e-6)
    # noise: unit-free noise rescaled to the norm of the state it replaces.
    noise = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs,
                                    source_for=ev.intervention_sources("noise", plain, k, seed=0))  # fmt: skip
    assert all(not torch.allclose(a, b) for a, b in zip(noise.latents, plain.latents))
    assert torch.allclose(noise.latents[0][0].norm(), plain.latents[0][0].norm(), rtol=1e-4)  # first pad: same state
    # oracle: the stage-1 targets of each row's helper image.
    targets = ev.stage1_targets(model, processor, batch)
    oracle = ev.generate_completions(model, processor, batch, max_new_tokens=12, generation_kwargs=kwargs,
                                     source_for=ev.intervention_sources("oracle", plain, k, 0, targets))  # fmt: skip
    for latents, target in zip(oracle.latents, targets):
        assert torch.allclose(latents, target[0], atol=1e-6)


def test_results_and_predictions_agree_and_rescore_independently(mirage, rows, tmp_path):
    model, processor = mirage
    kwargs = scripted(model, processor, rows, ["R", "D", "RD", "DR", "L", "U"])
    config = ev.EvaluationConfig(batch_size=4, max_new_tokens=14, generation_kwargs=kwargs)
    evaluation = ev.evaluate(model, processor, rows, config, model_name="tiny-test")
    out = ev.write_outputs(evaluation, tmp_path / "eval")
    results = json.loads((out / "results.json").read_text())
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert set(results["runs"]) == {"plain", *ev.INTERVENTIONS}
    assert len(lines) == len(rows) * len(results["runs"])
    for name, run in results["runs"].items():
        mine = [line for line in lines if line["run"] == name]
        # An independent re-score: simulate the boxed plan on the map.
        rescored = [simulate_plan(line["key"], parse_moves(line["parsed"])) == "success" for line in mine]
        assert rescored == [line["correct"] for line in mine]
        assert run["correct"] == sum(rescored) and run["n"] == len(mine)
        for level, group in run["per_level"].items():
            assert group["correct"] == sum(c for c, line in zip(rescored, mine) if str(line["level"]) == level)
        assert all("<|latent_start|>" in line["completion"] for line in mine)
    diagnostics = results["diagnostics"]
    assert diagnostics["rows_with_block"] == len(rows)
    assert diagnostics["retrieval"]["bank"] == len(rows) and 0 <= diagnostics["retrieval"]["top1"] <= 1
    for name in ("success_by_level.png", "latent_similarity.png", "retrieval.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    assert results["model"]["config_hash"] == ev.config_hash(model.config)
    assert "_ranked" not in json.dumps(results)


def test_bad_inputs_fail_before_any_generation(tmp_path, rows):
    main = runpy.run_path(str(REPO / "examples" / "evaluate_mirage.py"))["main"]
    with pytest.raises(SystemExit, match="no such folder"):
        main(["--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no config.json"):
        main(["--model", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        ev.load_rows(tmp_path / "nope.jsonl")
    with pytest.raises(ev.UnknownNameError, match="unknown interventions"):
        ev.EvaluationConfig(interventions=("zero", "blur"))
    from mirage_tasks import TaskDataError

    bad = tmp_path / "bad.jsonl"
    good = {"text_input": "Here is the map: <image>", "image_input": "x.png", "map_desc": [[1, 0], [0, 2]]}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"text_input": "no image marker"}) + "\n")
    with pytest.raises(TaskDataError):
        ev.load_rows(bad)
    unknown = [dict(rows[0], task="sudoku")]
    with pytest.raises(ev.UnknownNameError, match="sudoku"):
        ev.check_rows(unknown)
    with pytest.raises(TaskDataError, match="images"):
        ev.check_rows([dict(rows[0], images=[])])
    assert not (tmp_path / "o").exists()
