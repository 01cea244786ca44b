"""Import mmvim's kernels and backbones where the OpenMMLab stack cannot be
installed: the lent GPU machine.

Its image has torch 2.11 (CUDA 13), triton 3.6 and timm, but no mmcv,
mmsegmentation or mmdet, and nothing can be built there in the time a
session has. ``import mmvim`` registers every module in mmseg's and mmdet's
registries, and those packages import mmcv, whose ``mmcv.ops`` is compiled
(mmcv has no wheel for torch 2.11) and whose ``import mmcv`` needs OpenCV
(a 57 MB wheel, most of the 64 MiB a device call may carry). mmcv-lite does
not help: mmseg imports ``mmcv.ops`` as soon as its datasets or utils are
imported.

What the device phases measure needs none of that: ``mmvim.ops`` (torch,
triton, mmengine's Registry) and the three backbones (torch, mmengine's
BaseModule, a DropPath). :func:`load_mmvim` therefore imports mmvim as
usual when the stack is there, and otherwise imports the same sources
without the package ``__init__`` files that pull the stack in: ``mmvim``
(registration, datasets, runner), ``mmvim.models`` (the necks use
mmcv.cnn) and ``mmvim.checkpoint`` (its file loader uses mmengine's
runner, which imports OpenCV). ``mmvim.registry`` becomes a module whose
decorators register nothing (there is no registry to register in), and
``mmcv.cnn.bricks.DropPath`` is timm's (same stochastic depth; the device
phases build the models with ``drop_path_rate=0`` and in eval mode, so it
never runs). Nothing of the measured code is replaced.
"""
from __future__ import annotations

import importlib
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
#: what a failed ``import mmvim`` may be missing for :func:`load_mmvim` to
#: take the lite route (anything else is a real error and is raised)
STACK = ('mmcv', 'mmseg', 'mmdet', 'cv2', 'mmengine', 'ftfy', 'regex')
# packages imported without their __init__ in the lite route
_BARE = ('mmvim', 'mmvim.models', 'mmvim.checkpoint')


def _bare_package(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [os.path.join(ROOT, *name.split('.'))]
    # inspect (torch.library reads sources) wants a file; it is not run
    module.__file__ = os.path.join(module.__path__[0], '__init__.py')
    module.LITE_IMPORT = True
    module.__package__ = name
    sys.modules[name] = module
    if '.' in name:
        parent, _, child = name.rpartition('.')
        setattr(sys.modules[parent], child, module)
    return module


def _no_registry() -> types.ModuleType:
    module = types.ModuleType('mmvim.registry')
    module.__doc__ = ('Lite import (tools/gpu_check/imports.py): no mmseg / '
                      'mmdet registries to register in.')

    def register(name=None):
        return lambda cls: cls
    for attr in ('register_model', 'register_dataset',
                 'register_optim_constructor'):
        setattr(module, attr, register)
    sys.modules['mmvim.registry'] = module
    sys.modules['mmvim'].registry = module
    return module


def _timm_drop_path() -> None:
    """``mmcv.cnn.bricks.DropPath`` from timm, when mmcv cannot import."""
    try:
        from timm.layers import DropPath
    except ImportError as exc:
        raise ImportError(
            'mmvim without the OpenMMLab stack needs a DropPath: install '
            'mmcv (or mmcv-lite) or timm (the GPU image has timm)') from exc
    for name in ('mmcv', 'mmcv.cnn', 'mmcv.cnn.bricks'):
        module = types.ModuleType(name)
        module.__path__ = []
        module.__doc__ = ('Lite import (tools/gpu_check/imports.py): only '
                          'DropPath, from timm.')
        sys.modules[name] = module
    sys.modules['mmcv'].cnn = sys.modules['mmcv.cnn']
    sys.modules['mmcv.cnn'].bricks = sys.modules['mmcv.cnn.bricks']
    sys.modules['mmcv.cnn.bricks'].DropPath = DropPath


def _missing_stack(exc: ImportError) -> bool:
    name = (getattr(exc, 'name', None) or '').split('.')[0]
    return name in STACK or 'mmcv' in str(exc) or 'cv2' in str(exc)


def load_mmvim(force_lite: bool = False) -> str:
    """Make ``mmvim.ops`` and ``mmvim.models.backbones`` importable; returns
    'full' (``import mmvim`` worked) or 'lite' (the OpenMMLab stack is
    missing; see the module docstring). ``force_lite`` (or
    ``MMVIM_LITE_IMPORT=1``) takes the lite route even where the stack is
    installed, which is how CPU tests check it."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    if 'mmvim' in sys.modules:
        return import_mode()
    force_lite = force_lite or os.environ.get('MMVIM_LITE_IMPORT') == '1'
    if not force_lite:
        try:
            importlib.import_module('mmvim')
            return 'full'
        except ImportError as exc:
            if not _missing_stack(exc):
                raise
            for name in [n for n in sys.modules
                         if n == 'mmvim' or n.startswith('mmvim.')]:
                del sys.modules[name]
    try:
        importlib.import_module('mmcv.cnn.bricks')
    except ImportError:
        _timm_drop_path()
    for name in _BARE:
        _bare_package(name)
    _no_registry()
    importlib.import_module('mmvim.ops')
    backbones = importlib.import_module('mmvim.models.backbones')
    importlib.import_module('mmvim.models.layers')
    # what mmvim/models/__init__.py exports, but the necks (mmcv.cnn)
    for name in ('Vim', 'VMamba', 'MambaVision'):
        setattr(sys.modules['mmvim.models'], name, getattr(backbones, name))
    return 'lite'


def import_mode() -> str:
    """'full', 'lite' or 'none' (mmvim not loaded yet)."""
    module = sys.modules.get('mmvim')
    if module is None:
        return 'none'
    return 'lite' if getattr(module, 'LITE_IMPORT', False) else 'full'


def kernel_sdists() -> types.ModuleType:
    """``mmvim/utils/kernel_sdists.py`` (the pinned mamba-ssm /
    causal-conv1d sdists), loaded from its file: ``mmvim.utils`` itself
    imports the runner, which needs the OpenMMLab stack."""
    import importlib.util
    path = os.path.join(ROOT, 'mmvim', 'utils', 'kernel_sdists.py')
    spec = importlib.util.spec_from_file_location('_kernel_sdists', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
