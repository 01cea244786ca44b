from . import backbones, layers, necks  # noqa: F401  (registers modules)
from .backbones import Vim
from .necks import SimpleFeaturePyramid

__all__ = ['Vim', 'SimpleFeaturePyramid']
