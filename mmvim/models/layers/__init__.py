from .bimamba import BiMambaMixer
from .mambavision_mixer import Attention, MambaVisionMixer
from .mlp import Mlp
from .norm import LayerNorm2d, RMSNorm
from .rope import RotaryEmbedding2d, rotate_half
from .ss2d import SS2D

__all__ = ['Attention', 'BiMambaMixer', 'LayerNorm2d', 'MambaVisionMixer',
           'Mlp', 'RMSNorm', 'RotaryEmbedding2d', 'SS2D', 'rotate_half']
