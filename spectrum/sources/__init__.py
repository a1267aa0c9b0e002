"""Where weights come from: one lazy interface over local files and the Hugging Face Hub."""

from .base import TensorInfo, TensorSource
from .resolve import open_source

__all__ = ["TensorInfo", "TensorSource", "open_source"]
