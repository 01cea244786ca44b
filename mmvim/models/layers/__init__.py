from .bimamba import BiMambaMixer
from .norm import LayerNorm2d, RMSNorm
from .rope import RotaryEmbedding2d, rotate_half

__all__ = ['BiMambaMixer', 'LayerNorm2d', 'RMSNorm', 'RotaryEmbedding2d', 'rotate_half']
