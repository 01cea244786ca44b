from . import backbones, layers, necks  # noqa: F401  (registers modules)
from .backbones import MambaVision, Vim, VMamba
from .necks import SimpleFeaturePyramid

__all__ = ['MambaVision', 'Vim', 'VMamba', 'SimpleFeaturePyramid']
