"""examples/make_dataset.py and the dataset card (rendered only; nothing is pushed)."""

from pathlib import Path

import datasets
import pytest
import yaml

import mirage_tasks
from hub_cards import render_dataset_card

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "official"


def _args(out, *extra):
    return ["--task", "vsp_planning", "--variant", "mirage-direct", "--n-train", "24", "--n-test", "8",
            "--levels", "3-4", "--seed", "3", "--output-dir", str(out), *extra]  # fmt: skip


def test_cli_writes_hub_layout_with_card_and_is_deterministic(make_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MIRAGE_OFFICIAL_DATA", raising=False)  # as in a user's clone: the shipped test maps
    splits = make_dataset.main(_args(tmp_path / "a", "--write-official"))
    assert "excluding the 400 official test maps of the copy shipped with mirage_tasks" in capsys.readouterr().err
    again = make_dataset.main(_args(tmp_path / "b"))
    for name in ("train", "test"):
        assert splits[name]["map_desc"] == again[name]["map_desc"]
        assert (tmp_path / "a" / "data" / f"{name}-00000-of-00001.parquet").is_file()
        assert (tmp_path / "a" / "official" / f"{name}.jsonl").is_file()
    train_maps = {str(m) for m in splits["train"]["map_desc"]}
    assert not train_maps & {str(m) for m in splits["test"]["map_desc"]}
    assert not train_maps & {str(m) for m in mirage_tasks.official_test_maps()}

    card = (tmp_path / "a" / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["configs"][0]["data_files"] == [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "test", "path": "data/test-*.parquet"},
    ]
    assert "| train | 24 |" in card and "--seed 3" in card and "<output_image>The answer is" in card

    loaded = datasets.load_dataset(str(tmp_path / "a"), cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].features == mirage_tasks.FEATURES and len(loaded["test"]) == 8
    assert loaded["train"][0]["helper_images"][0].size == loaded["train"][0]["images"][0].size


def test_cli_exclusion_can_be_turned_off_or_read_from_official_data(make_dataset, tmp_path, capsys, monkeypatch):
    make_dataset.main(_args(tmp_path / "c", "--exclude-official", "none"))
    assert "not excluding" in capsys.readouterr().err
    monkeypatch.setenv("MIRAGE_OFFICIAL_DATA", str(tmp_path / "absent"))  # an explicit path wins over the variable
    for given in (FIXTURES, FIXTURES / "vsp_spatial_planning_test" / "test_direct.jsonl"):
        make_dataset.main(_args(tmp_path / "e", "--exclude-official", str(given)))
        assert f"excluding the 5 official test maps of {FIXTURES}/vsp_spatial_planning_test" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'absent'} \\(from \\$MIRAGE_OFFICIAL_DATA\\) not found"):
        make_dataset.main(_args(tmp_path / "f"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nowhere'} \\(given as argument\\) not found"):
        make_dataset.main(_args(tmp_path / "f", "--exclude-official", str(tmp_path / "nowhere")))


def test_cli_rejects_bad_choices(make_dataset, tmp_path):
    with pytest.raises(SystemExit):
        make_dataset.main(["--task", "maze", "--variant", "direct", "--output-dir", str(tmp_path)])
    with pytest.raises(mirage_tasks.LevelError, match="levels must lie in 3-8"):
        make_dataset.main(_args(tmp_path / "d", "--levels", "2-4"))


@pytest.mark.parametrize("task", mirage_tasks.TASKS)
def test_dataset_card_renders_for_every_task(task):
    card = render_dataset_card(task=task, variant="cot", split_sizes={"train": 5, "test": 2}, levels="3-6", seed=0,
                               example_completion="<think> x </think>", command="python examples/make_dataset.py")  # fmt: skip
    assert card.data.pretty_name.endswith("(cot)") and task in card.data.tags
    assert ("FrozenLake exactly" in str(card)) == (task != "jigsaw")
