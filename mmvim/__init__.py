"""mmvim: Mamba vision backbones for OpenMMLab dense prediction.

Importing mmvim registers every mmvim module in both the mmseg and the mmdet
registries (see :mod:`mmvim.registry`); configs can instead say
``custom_imports=dict(imports=['mmvim'])``. It also lets mmengine open its own
checkpoints on torch >= 2.6 (see :mod:`mmvim.checkpoint.io`). Importing
never touches the optional CUDA kernel packages (mamba-ssm, causal-conv1d).
"""
from . import checkpoint, datasets, engine, models, ops  # noqa: F401
from .version import __version__

__all__ = ['__version__', 'ops', 'datasets', 'checkpoint', 'engine',
           'models']
