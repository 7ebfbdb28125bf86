"""Model cards for saved Mirage folders."""

import json

import pytest

from hub_cards import render_model_card, write_model_card


def test_rendered_card_has_metadata_usage_and_metrics():
    card = render_model_card(
        repo_id="someone/mirage-tiny",
        base_model="Qwen/Qwen2.5-VL-7B-Instruct",
        latent_num_tokens=4,
        training_summary="stage 1 then stage 2",
        metrics={"VSP planning success (40 official test maps)": 0.125},
    )
    text = str(card)
    assert card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert "custom_code" in card.data.tags and card.data.pipeline_tag == "image-text-to-text"
    assert 'AutoModel.from_pretrained("someone/mirage-tiny", trust_remote_code=True)' in text
    assert "| VSP planning success (40 official test maps) | 0.125 |" in text
    assert "for\n4 steps" in text or "for 4 steps" in text


def test_write_model_card_reads_the_saved_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mirage", "latent_num_tokens": 6}))
    path = write_model_card(tmp_path, base_model="tiny-base")
    text = path.read_text()
    assert path.name == "README.md" and "**Latent tokens per block (k):** 6" in text
    assert "Not evaluated." in text


def test_write_model_card_refuses_a_folder_that_is_not_mirage(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_model_card(tmp_path, base_model="x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ValueError, match="not 'mirage'"):
        write_model_card(tmp_path, base_model="x")
