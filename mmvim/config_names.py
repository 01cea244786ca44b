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

:func:`register` runs on ``import mmvim``. An installed mmvim also runs it
when ``mmengine.config`` is first imported (``mmvim-config-names.pth``, see
:func:`install_import_hook`), so plain mmengine (``Config.fromfile`` +
``Runner.from_cfg``) reads ``mmvim::`` bases without ``import mmvim``.

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


class ConfigNameError(ValueError):
    """An ``mmvim::`` name that is malformed or names no config; the
    message says what to write instead."""


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


def _wrap_get_cfg_path(original):
    def _get_cfg_path(cfg_path: str, filename: str
                      ) -> Tuple[str, Optional[str]]:
        if is_config_name(cfg_path):
            # read like a local base: no `_scope_='mmvim'` on its dicts
            return resolve(cfg_path), None
        return original(cfg_path, filename)

    _get_cfg_path.__doc__ = original.__doc__
    _get_cfg_path.__wrapped__ = original
    setattr(_get_cfg_path, _WRAPPED, True)
    return _get_cfg_path


def register() -> None:
    """Teach mmengine's Config the ``mmvim::`` names (idempotent)."""
    from mmengine.config import config as config_module
    from mmengine.config import utils as config_utils
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    config_cls = config_module.Config
    current = config_cls.__dict__['_get_cfg_path'].__func__
    if not getattr(current, _WRAPPED, False):
        config_cls._get_cfg_path = staticmethod(_wrap_get_cfg_path(current))


def is_registered() -> bool:
    """Whether :func:`register` has run in this process."""
    config_module = sys.modules.get('mmengine.config.config')
    if config_module is None:
        return False
    func = config_module.Config.__dict__['_get_cfg_path'].__func__
    return getattr(func, _WRAPPED, False)


class _RegisterAfterMMEngineConfig:
    """Import hook: runs :func:`register` right after ``mmengine.config``
    is imported, then removes itself from ``sys.meta_path``."""

    target = 'mmengine.config'

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != cls.target:
            return None
        cls.uninstall()
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, 'loader', None)
        exec_module = getattr(loader, 'exec_module', None)
        if exec_module is None:
            return spec

        def exec_and_register(module):
            exec_module(module)
            try:
                register()
            except Exception:  # never break mmengine's import
                pass

        loader.exec_module = exec_and_register
        return spec

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [f for f in sys.meta_path
                            if getattr(f, '__name__', '') != cls.__name__]


def install_import_hook() -> None:
    """What ``mmvim-config-names.pth`` runs at interpreter start: register
    the ``mmvim::`` names when ``mmengine.config`` is imported (at once if
    it already is). Costs one entry in ``sys.meta_path`` until then."""
    if 'mmengine.config' in sys.modules:
        register()
    else:
        hook = _RegisterAfterMMEngineConfig
        hook.uninstall()  # at most one, whichever copy of this file
        sys.meta_path.insert(0, hook)


#: the line of ``mmvim-config-names.pth`` (setup.py writes it): find mmvim
#: without importing it, load this file alone and install the hook; silent
#: when anything fails (then ``import mmvim`` first still works).
PTH_LINE = (
    "import sys; exec(\"try:\\n import importlib.util as u, os\\n"
    " s = u.find_spec('mmvim')\\n"
    " f = os.path.join(os.path.dirname(s.origin), 'config_names.py')\\n"
    " spec = u.spec_from_file_location('_mmvim_config_names', f)\\n"
    " m = u.module_from_spec(spec)\\n spec.loader.exec_module(m)\\n"
    " m.install_import_hook()\\nexcept Exception:\\n pass\\n\")\n")
PTH_NAME = 'mmvim-config-names.pth'
