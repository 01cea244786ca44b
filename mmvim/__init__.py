"""mmvim: Mamba vision backbones for OpenMMLab dense prediction.

Importing mmvim registers every mmvim module in both the mmseg and the mmdet
registries (see :mod:`mmvim.registry`); configs can instead say
``custom_imports=dict(imports=['mmvim'])``. It also lets mmengine open its own
checkpoints on torch >= 2.6 (see :mod:`mmvim.checkpoint.io`) and read
``mmvim::configs/...`` base configs from any folder (see
:mod:`mmvim.config_names`). Importing never touches the optional CUDA kernel
packages (mamba-ssm, causal-conv1d).
"""
from . import checkpoint, config_names, datasets, engine, models, ops
from .version import __version__

config_names.register()

__all__ = ['__version__', 'ops', 'datasets', 'checkpoint', 'engine',
           'models', 'config_names']
