"""Shared fixtures: the embedded tiny Qwen2.5-VL base and its Mirage conversion, each built once per session.

Both folders are shared by every test of the session: treat them as read-only (load from them, save elsewhere).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mirage_tiny import tiny_base_path


@pytest.fixture
def one_thread():
    """Tiny models run many small ops; on a shared 2-core machine two intra-op threads stall on each other whenever
    a core is busy elsewhere, so the training tests use one (and put the setting back)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_base_dir() -> str:
    """Folder of the tiny random Qwen2.5-VL base (vocab of about 830, hidden 128, 4 layers), built offline in seconds."""
    return tiny_base_path()


@pytest.fixture(scope="session")
def tiny_mirage_dir(tiny_base_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Folder of the tiny base converted to Mirage (k = 4): model, processor and remote-code files, as
    `save_pretrained` writes them. Load with `MirageForConditionalGeneration.from_pretrained` (or `AutoModel` with
    `trust_remote_code=True`)."""
    from modeling_mirage import MirageForConditionalGeneration, MirageProcessor

    folder = tmp_path_factory.mktemp("tiny-mirage")
    processor = MirageProcessor.from_base(tiny_base_dir)
    model = MirageForConditionalGeneration.from_base(tiny_base_dir, processor=processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def make_dataset():
    """`examples/make_dataset.py` loaded as a module (its `main`, `MakeDatasetArguments`, ...)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "make_dataset.py"
    spec = importlib.util.spec_from_file_location("make_dataset", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_dataset"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("make_dataset", None)
