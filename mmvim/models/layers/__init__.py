from .bimamba import BiMambaMixer
from .norm import RMSNorm
from .rope import RotaryEmbedding2d, rotate_half

__all__ = ['BiMambaMixer', 'RMSNorm', 'RotaryEmbedding2d', 'rotate_half']
