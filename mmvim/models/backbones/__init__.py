from .mambavision import MambaVision
from .vim import Vim
from .vmamba import VMamba

__all__ = ['MambaVision', 'Vim', 'VMamba']
