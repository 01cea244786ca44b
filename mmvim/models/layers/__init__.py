from .bimamba import BiMambaMixer
from .mlp import Mlp
from .norm import LayerNorm2d, RMSNorm
from .rope import RotaryEmbedding2d, rotate_half
from .ss2d import SS2D

__all__ = ['BiMambaMixer', 'LayerNorm2d', 'Mlp', 'RMSNorm',
           'RotaryEmbedding2d', 'SS2D', 'rotate_half']
