from . import backbones, layers, necks  # noqa: F401  (registers modules)
from .backbones import Vim, VMamba
from .necks import SimpleFeaturePyramid

__all__ = ['Vim', 'VMamba', 'SimpleFeaturePyramid']
