from .hooks import ResumableCheckpointHook
from .layer_decay import VimLayerDecayOptimizerConstructor
from .runner import MMVimRunner

__all__ = ['VimLayerDecayOptimizerConstructor', 'MMVimRunner',
           'ResumableCheckpointHook']
