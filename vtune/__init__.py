"""vtune: find the best vLLM serving configuration by measuring it."""

from vtune._errors import VtuneError
from vtune._serve_config import ServeConfig, parse_serve_args

__all__ = ["ServeConfig", "VtuneError", "parse_serve_args"]
__version__ = "0.1.0"
