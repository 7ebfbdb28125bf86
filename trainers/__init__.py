from .tiny_base import build_tiny_base as build_tiny_base
from .tiny_base import tiny_base_path as tiny_base_path
