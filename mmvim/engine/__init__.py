from .layer_decay import VimLayerDecayOptimizerConstructor

__all__ = ['VimLayerDecayOptimizerConstructor']
