"""The embedded default: a tiny Qwen2.5-VL-architecture base built offline, for tests, the demo and CPU studies.

`tiny_base_path()` builds it once per process (or reuses a cache folder); `build_tiny_base(folder)` writes one. It is
a fixture of this repository, not part of a trained model: nothing in `modeling_mirage` or `trainers` depends on it
(the trainers resolve the model name `"tiny"` to it on demand).

`pretrained_base_path()` is the shipped stage-0 base (`mirage_tiny/pretrained`, model name `"tiny-pretrained"`): the
same architecture after the perception pretraining of `mirage_tiny.pretrain` (`make base` rebuilds it).
"""

from .base import DEFAULT_SYSTEM_PROMPT as DEFAULT_SYSTEM_PROMPT
from .base import QWEN_CHAT_TEMPLATE as QWEN_CHAT_TEMPLATE
from .base import QWEN_SPECIAL_TOKENS as QWEN_SPECIAL_TOKENS
from .base import build_tiny_base as build_tiny_base
from .base import build_tiny_tokenizer as build_tiny_tokenizer
from .base import tiny_base_path as tiny_base_path
from .pretrained import PRETRAINED_DIR as PRETRAINED_DIR
from .pretrained import pretrained_base_path as pretrained_base_path

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_base",
    "build_tiny_tokenizer",
    "PRETRAINED_DIR",
    "pretrained_base_path",
    "tiny_base_path",
]
