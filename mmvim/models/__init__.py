from . import backbones, layers  # noqa: F401  (registers modules)
from .backbones import Vim

__all__ = ['Vim']
