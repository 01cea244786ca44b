from .layer_decay import VimLayerDecayOptimizerConstructor
from .runner import MMVimRunner

__all__ = ['VimLayerDecayOptimizerConstructor', 'MMVimRunner']
