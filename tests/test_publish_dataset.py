"""`examples/make_dataset.py --push-to-hub`: one commit with every split (images embedded) and the dataset card."""

from pathlib import Path

import datasets
import pytest
from fake_hub import TOKEN, FakeHub, assert_no_token
from huggingface_hub import DatasetCard
from PIL import Image

from hub_cards.dataset_card import dataset_folder_files, push_dataset_folder

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "someone/vsp-reasoning-mirage-direct"


def test_push_to_hub_is_one_commit_of_data_and_card(make_dataset, tmp_path, monkeypatch, capsys):
    hub = FakeHub(monkeypatch)
    monkeypatch.delenv("MIRAGE_OFFICIAL_DATA", raising=False)
    out = tmp_path / "out"
    splits = make_dataset.main(
        ["--task", "vsp_reasoning", "--variant", "mirage-direct", "--n-train", "12", "--n-test", "6", "--levels",
         "3-4", "--seed", "7", "--output-dir", str(out), "--push-to-hub", REPO_ID, "--private", "true",
         "--hub-token", TOKEN]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert hub.repos == [{"repo_id": REPO_ID, "private": True, "repo_type": "dataset"}]
    (commit,) = hub.commits
    assert commit["repo_type"] == "dataset" and commit["token"] == TOKEN
    assert sorted(commit["files"]) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"
    ]  # fmt: skip
    assert_no_token(hub, printed.out, printed.err)

    # the commit alone is a loadable dataset repository: card, splits, images
    repo = tmp_path / "repo"
    for name, data in commit["files"].items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    loaded = datasets.load_dataset(str(repo))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 12, "test": 6}
    assert loaded["train"]["id"] == splits["train"]["id"]
    helper = loaded["train"][0]["helper_images"][0]
    assert isinstance(helper, Image.Image) and helper.size == splits["train"][0]["helper_images"][0].size

    card = DatasetCard.load(repo / "README.md")
    info = card.data.dataset_info
    assert [s["num_examples"] for s in info["splits"]] == [12, 6]
    names = [f["name"] for f in info["features"]]
    assert {"prompt", "completion", "images", "helper_images", "map_desc", "plan"} <= set(names)
    assert datasets.Features._from_yaml_list(info["features"]) == splits["train"].features
    mirage = card.data.mirage
    assert mirage["seed"] == 7 and mirage["levels"] == "3-4" and mirage["helper_step"] == "decisive"
    assert mirage["excluded_official_test_maps"] == 400 and mirage["generator_version"]
    text = card.text
    assert "Helper images show the map at the step that decides the outcome" in text
    assert "400 maps of the official VSP" in text
    assert "- `helper_images`: list of image" in text
    assert f'load_dataset("{REPO_ID}")' in text


def test_a_folder_whose_card_names_a_missing_split_is_refused_before_any_upload(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    with pytest.raises(FileNotFoundError, match="no README.md"):
        push_dataset_folder(tmp_path, REPO_ID)
    card = DatasetCard("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                       "    path: data/train-*.parquet\n---\n# x\n")  # fmt: skip
    card.save(tmp_path / "README.md")
    with pytest.raises(FileNotFoundError, match=r"split 'train' as data/train-\*.parquet, but no such file"):
        dataset_folder_files(tmp_path)
    with pytest.raises(FileNotFoundError):
        push_dataset_folder(tmp_path, REPO_ID)
    assert hub.repos == [] and hub.commits == []


def test_push_dataset_with_card_is_one_commit_too(tmp_path, monkeypatch):
    import mirage_tasks
    from hub_cards import push_dataset_with_card, render_dataset_card

    hub = FakeHub(monkeypatch)
    splits = mirage_tasks.build_splits("jigsaw", "direct", 4, 2, "3", 0, [])
    card = render_dataset_card(
        task="jigsaw", variant="direct", split_sizes={n: len(s) for n, s in splits.items()}, levels="3", seed=0,
        example_completion="x", command="make_dataset", features=splits["train"].features,
    )  # fmt: skip
    assert push_dataset_with_card(splits, card, REPO_ID) == f"https://huggingface.co/datasets/{REPO_ID}"
    (commit,) = hub.commits
    assert sorted(commit["files"]) == [
        "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"
    ]  # fmt: skip
    assert commit["files"]["README.md"].decode() == str(card)
