"""``mmvim::`` config names: inherit mmvim's configs from any folder.

An experiment of one's own, in any folder, inherits an mmvim config the way
OpenMMLab configs inherit across packages::

    _base_ = ['mmvim::configs/upernet_vim_ti_ade20k.py']
    model = dict(decode_head=dict(num_classes=19))

A name is ``mmvim::`` followed by the config's path in the mmvim repository
(``configs/...``). The configs ship inside the installed package, in
``mmvim/.mim/configs`` (setup.py copies them into a wheel and symlinks them
in an editable install, as mmseg and mmdet do); a source checkout on
``PYTHONPATH`` uses its own ``configs/``.

mmengine 0.10.7 resolves ``pkg::`` names only for the packages of its
``MODULE2PACKAGE`` table and only in the form ``pkg::folder/file.py``; it
looks the package up with ``pkg_resources``, which points an editable
install at site-packages, and it tags every dict of such a base with
``_scope_='pkg'``, a registry scope that mmvim does not have (mmvim's modules
live in the mmseg and mmdet registries). :func:`register` therefore adds
``mmvim`` to ``MODULE2PACKAGE`` and wraps ``Config._get_cfg_path`` so that
an ``mmvim::`` base is found in the mmvim that Python imports and is read
like a local ``_base_`` file: the inherited dicts keep the scopes the mmvim
config itself gives them (``mmseg`` / ``mmdet``). Every other name is left
to mmengine.

:func:`register` also lets an inferencer's ``model`` be an ``mmvim::``
name (``MMSegInferencer('mmvim::configs/...', weights=...)``; mmengine would
look the name up in the toolbox's model index). It runs on ``import mmvim``;
an installed mmvim also runs it at interpreter start
(``mmvim-config-names.pth``), where it only arms an import hook that patches
``mmengine.config`` / ``mmengine.infer`` right after they are imported: plain
mmengine (``Config.fromfile`` + ``Runner.from_cfg``) then reads ``mmvim::``
bases without ``import mmvim``. Without the hook (a checkout on
``PYTHONPATH``), ``import mmvim`` must come first.

This module imports only the standard library at load time: the ``.pth``
hook loads it on its own, without importing the mmvim package.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import os.path as osp
import sys
from typing import List, Optional, Tuple

PACKAGE = 'mmvim'
PREFIX = PACKAGE + '::'
#: the folder of the spelling: names mirror the repository's configs/
FOLDER = 'configs'
#: the hint shown wherever an mmvim:: name fails
EXAMPLE = PREFIX + FOLDER + '/upernet_vim_ti_ade20k.py'
_WRAPPED = '_mmvim_config_names'


#: the module name of this file when the ``.pth`` start-up hook loads it
HOOK_MODULE = '_mmvim_config_names'


class ConfigNameError(ValueError):
    """An ``mmvim::`` name that is malformed or names no config; the
    message says what to write instead."""


# The start-up hook's copy of this file patched mmengine first, so its
# functions raise its ConfigNameError: ``mmvim.config_names`` uses that same
# class, and ``except ConfigNameError`` catches both copies' errors.
_hook_copy = sys.modules.get(HOOK_MODULE)
if __name__ != HOOK_MODULE and isinstance(
        getattr(_hook_copy, 'ConfigNameError', None), type):
    ConfigNameError = _hook_copy.ConfigNameError  # noqa: F811
del _hook_copy


def is_config_name(name: str) -> bool:
    """Whether ``name`` is an ``mmvim::`` config name."""
    return isinstance(name, str) and name.startswith(PREFIX)


def _package_dir() -> Optional[str]:
    """The folder of the mmvim package Python imports (without importing
    it when it is not imported yet)."""
    module = sys.modules.get(PACKAGE)
    origin = getattr(module, '__file__', None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(PACKAGE)
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, 'origin', None)
    return osp.dirname(osp.abspath(origin)) if origin else None


def configs_dir() -> str:
    """The folder ``mmvim::configs/`` names point into: the installed
    package's ``.mim/configs``, or a source checkout's ``configs/``."""
    package = _package_dir()
    if package is None:
        raise ConfigNameError(
            f'{PREFIX} names need the mmvim package, which Python cannot '
            'find: pip install mmvim (or `pip install -e .` in a checkout).')
    candidates = [osp.join(package, '.mim', FOLDER),
                  osp.join(osp.dirname(package), FOLDER)]
    for path in candidates:
        if osp.isdir(osp.join(path, '_base_')):
            return path
    raise ConfigNameError(
        f'mmvim at {package} has no configs (looked in {candidates}). '
        'Reinstall it from the repository (pip install . builds them into '
        'the package), or run from a checkout.')


def list_configs() -> List[str]:
    """Every experiment config, as its ``mmvim::`` name (sorted)."""
    root = configs_dir()
    return sorted(f'{PREFIX}{FOLDER}/{f}' for f in os.listdir(root)
                  if f.endswith('.py'))


def resolve(name: str) -> str:
    """The file of an ``mmvim::`` config name, e.g.
    ``resolve('mmvim::configs/upernet_vim_ti_ade20k.py')``.

    Raises:
        ConfigNameError: ``name`` is not of the form
            ``mmvim::configs/<file>``, or there is no such config (the
            message lists close names).
    """
    if not is_config_name(name):
        raise ConfigNameError(f'{name!r} is not an {PREFIX} name (e.g. '
                         f'{EXAMPLE}).')
    rel = name[len(PREFIX):]
    if not rel.startswith(FOLDER + '/'):
        raise ConfigNameError(
            f'{name!r}: an {PREFIX} name is the config\'s path in the mmvim '
            f'repository, with its folder: write {PREFIX}{FOLDER}/{rel} '
            f'(e.g. {EXAMPLE}).')
    root = configs_dir()
    path = osp.normpath(osp.join(root, rel[len(FOLDER) + 1:]))
    if not path.startswith(osp.normpath(root) + os.sep) or \
            not osp.isfile(path):
        close = difflib.get_close_matches(name, list_configs(), n=3)
        hint = f' Did you mean {" or ".join(close)}?' if close else ''
        raise ConfigNameError(
            f'no mmvim config {name!r} (looked for {path}).{hint} '
            f'The configs are listed in {root}.')
    return path


def _mark(func, original):
    func.__doc__ = original.__doc__
    func.__wrapped__ = original
    setattr(func, _WRAPPED, True)
    return func


def _patch_config() -> None:
    """mmengine.config: ``mmvim`` in MODULE2PACKAGE, and ``mmvim::`` bases
    resolved by :func:`resolve` and read without a scope (as local
    bases)."""
    from mmengine.config import config as config_module
    from mmengine.config import utils as config_utils
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    config_cls = config_module.Config
    original = config_cls.__dict__['_get_cfg_path'].__func__
    if getattr(original, _WRAPPED, False):
        return

    def _get_cfg_path(cfg_path: str, filename: str
                      ) -> Tuple[str, Optional[str]]:
        if is_config_name(cfg_path):
            return resolve(cfg_path), None
        return original(cfg_path, filename)

    config_cls._get_cfg_path = staticmethod(_mark(_get_cfg_path, original))


def _patch_inferencer() -> None:
    """mmengine.infer: an inferencer's ``model`` may be an ``mmvim::`` name
    (mmengine would look it up in its toolbox's model index)."""
    from mmengine.infer.infer import BaseInferencer
    original = BaseInferencer.__dict__['_load_model_from_metafile']
    if getattr(original, _WRAPPED, False):
        return

    def _load_model_from_metafile(self, model: str):
        if is_config_name(model):
            from mmengine.config import Config
            return Config.fromfile(resolve(model)), None
        return original(self, model)

    BaseInferencer._load_model_from_metafile = _mark(
        _load_model_from_metafile, original)


#: module -> what to patch once it is imported
_PATCHES = {'mmengine.config': _patch_config,
            'mmengine.infer.infer': _patch_inferencer}


def register() -> None:
    """Teach mmengine the ``mmvim::`` names (idempotent): patch the modules
    already imported now, the others right after their import (an import
    hook that removes itself once done)."""
    pending = []
    for name, patch in _PATCHES.items():
        if name in sys.modules:
            patch()
        else:
            pending.append(name)
    _PatchAfterImport.uninstall()  # at most one, whichever copy of this file
    if pending:
        _PatchAfterImport.pending = set(pending)
        sys.meta_path.insert(0, _PatchAfterImport)


def is_registered() -> bool:
    """Whether mmengine's Config resolves ``mmvim::`` names now."""
    config_module = sys.modules.get('mmengine.config.config')
    if config_module is None:
        return False
    func = config_module.Config.__dict__['_get_cfg_path'].__func__
    return getattr(func, _WRAPPED, False)


class _PatchAfterImport:
    """Import hook (``sys.meta_path``): applies the patch of a module of
    :data:`_PATCHES` right after that module is executed."""

    pending: set = set()

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname not in cls.pending:
            return None
        cls.pending.discard(fullname)
        if not cls.pending:
            cls.uninstall()
        # the real spec, from the finders after this one
        spec = None
        for finder in sys.meta_path:
            if finder is cls or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        exec_module = getattr(getattr(spec, 'loader', None), 'exec_module',
                              None)
        if exec_module is None:
            return spec

        def exec_and_patch(module):
            exec_module(module)
            try:
                _PATCHES[fullname]()
            except Exception:  # never break mmengine's own import
                pass

        spec.loader.exec_module = exec_and_patch
        return spec

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path
                            if getattr(f, '__name__', '') != cls.__name__]


#: the line of ``mmvim-config-names.pth`` (setup.py writes it): at
#: interpreter start, find mmvim without importing it, load this file alone
#: and :func:`register` (which only installs the import hook: mmengine is not
#: imported yet); silent when anything fails (``import mmvim`` still works).
PTH_LINE = (
    "import sys; exec(\"try:\\n import importlib.util as u, os\\n"
    " s = u.find_spec('mmvim')\\n"
    " f = os.path.join(os.path.dirname(s.origin), 'config_names.py')\\n"
    " spec = u.spec_from_file_location('_mmvim_config_names', f)\\n"
    " m = u.module_from_spec(spec)\\n sys.modules[spec.name] = m\\n"
    " spec.loader.exec_module(m)\\n"
    " m.register()\\nexcept Exception:\\n pass\\n\")\n")
PTH_NAME = 'mmvim-config-names.pth'
