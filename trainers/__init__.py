from .tiny_base import build_tiny_base, tiny_base_path
