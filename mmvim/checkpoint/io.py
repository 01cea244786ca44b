"""Opening checkpoint files safely on any torch version.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine calls
``torch.load`` without the argument, so every checkpoint it writes (its
message hub pickles HistoryBuffer objects and numpy scalars) and official
release files holding an ``argparse.Namespace``, numpy values or a yacs
``CfgNode`` fail to load, including ``--resume`` and ``tools/test.py``; a
full unpickle (``weights_only=False``) opens them, but runs whatever code the
file names. mmvim therefore replaces mmengine's loader for local paths and
URLs with :func:`load_checkpoint_file`, which reads every file through
:mod:`mmvim.checkpoint.safe_pickle`: the metadata real checkpoints carry
loads as data, objects of classes mmvim does not import (a yacs ``CfgNode``,
with or without yacs installed) become inert
:class:`~mmvim.checkpoint.safe_pickle.UnpickledObject` placeholders, and a
file that wants to call anything else (``os.system``, ``builtins.eval``, an
unknown class with a reducer) raises :class:`UnsafeCheckpointError` (one
line naming the file and the global) before anything runs. Setting
``MMVIM_TRUST_CHECKPOINTS=1`` (the tools' ``--trust-checkpoint``) is the
user's explicit choice of a full unpickle.

A file that cannot be a checkpoint (empty, truncated by an interrupted save,
a text file, a TorchScript archive or another format) raises
:class:`CheckpointFileError` with one line naming the file and the problem,
instead of torch's zip-reader traceback or a ``KeyError`` from its
unpickler.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import zipfile
from typing import Any, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..utils.misc import warn_once
from . import safe_pickle
from .common import CheckpointFileError, UnsafeCheckpointError

__all__ = ['load_checkpoint_file', 'url_cache_path', 'checkpoint_file_problem',
           'TRUST_ENV', 'trust_checkpoints', 'add_trust_flag',
           'apply_trust_flag']

_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default (zip) format
_PICKLE_MAGIC = b'\x80'  # a pickle: torch's legacy format
TRUST_ENV = 'MMVIM_TRUST_CHECKPOINTS'
_TRUE = ('1', 'true', 'yes', 'on')


def trust_checkpoints() -> bool:
    """Whether the user chose full unpickling (``MMVIM_TRUST_CHECKPOINTS``
    set to 1/true/yes/on), which can run code stored in a file."""
    return os.environ.get(TRUST_ENV, '').strip().lower() in _TRUE


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """A tool's ``--trust-checkpoint`` (same as MMVIM_TRUST_CHECKPOINTS=1)."""
    parser.add_argument(
        '--trust-checkpoint', action='store_true',
        help='load checkpoint files with a full unpickle, which can run '
        f'code stored in them (same as {TRUST_ENV}=1); only for files you '
        'trust. Without it, a file that wants to run code is refused.')


def apply_trust_flag(args: argparse.Namespace) -> None:
    """Export ``--trust-checkpoint`` as MMVIM_TRUST_CHECKPOINTS=1 (for this
    process and the ones it starts)."""
    if getattr(args, 'trust_checkpoint', False):
        os.environ[TRUST_ENV] = '1'


def checkpoint_file_problem(filename: str) -> Optional[str]:
    """What makes ``filename`` unreadable as a torch checkpoint, from its
    first bytes and (for the zip format) its end record, without loading
    it; None if it looks complete. A save interrupted part-way leaves a zip
    without the end-of-archive record that torch writes last."""
    if not osp.isfile(filename):
        return 'does not exist'
    size = osp.getsize(filename)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(filename):
            return (f'is truncated ({size} bytes, the end of its zip '
                    'archive is missing): it was not completely written, '
                    'e.g. a save that was interrupted')
        try:
            with zipfile.ZipFile(filename) as archive:
                names = archive.namelist()
        except Exception as err:  # noqa: BLE001 - any damage to the index
            return (f'is a damaged zip archive ({type(err).__name__}: '
                    f'{str(err)[:120]})')
        if any(n.rsplit('/', 1)[-1] == 'constants.pkl' for n in names):
            return ('is a TorchScript archive (torch.jit.save), not a '
                    'checkpoint: load it with torch.jit.load, or save its '
                    'state_dict() with torch.save')
        return None
    if head.startswith(_PICKLE_MAGIC):
        return None
    try:
        head.decode('utf-8')
        kind = 'a text file'
    except UnicodeDecodeError:
        kind = 'another format'
    return (f'is not a PyTorch checkpoint ({kind} starting with '
            f'{head[:8]!r})')


def _unreadable(filename: str, err: BaseException) -> CheckpointFileError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return CheckpointFileError(
        f'checkpoint {filename} could not be read by torch.load '
        f'({type(err).__name__}: {first[:200]})')


def _torch_load_safely(filename: str, map_location: Optional[Any]) -> Any:
    if os.environ.get('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '').lower() in _TRUE:
        # the user asked torch for its stricter weights-only unpickler
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    return torch.load(filename, map_location=map_location,
                      weights_only=False, pickle_module=safe_pickle)


def refusal_message(filename: str, err: safe_pickle.RefusedGlobal) -> str:
    """The one line that says why ``filename`` is refused and what to do."""
    return (f'checkpoint {filename} wants to {err.action} while loading, '
            'which could run code; mmvim refuses it (nothing was run). If '
            f'you trust this file, set {TRUST_ENV}=1 (tools: '
            '--trust-checkpoint) to load it with a full unpickle.')


def load_checkpoint_file(filename: str, map_location: Optional[Any] = None
                         ) -> Any:
    """``torch.load`` a local checkpoint without running code stored in it.

    Tensors, mmengine's resume state and the metadata releases carry load
    as data (see :mod:`mmvim.checkpoint.safe_pickle`); objects of other
    classes become inert placeholders (with a one-time warning naming the
    classes). With ``MMVIM_TRUST_CHECKPOINTS=1`` the file is fully
    unpickled instead (objects of modules that are not installed still
    become placeholders).

    Raises :class:`UnsafeCheckpointError` for a file that wants to call
    something that is not allowed, :class:`CheckpointFileError` for a
    missing, empty, truncated or foreign file (one line each: the file and
    what is wrong)."""
    filename = osp.expanduser(filename)
    problem = checkpoint_file_problem(filename)
    if problem:
        raise CheckpointFileError(f'checkpoint {filename} {problem}.')
    trusted_err: Optional[BaseException] = None
    if trust_checkpoints():
        try:
            return torch.load(filename, map_location=map_location,
                              weights_only=False)
        except (ImportError, AttributeError) as err:
            trusted_err = err  # a class of a module that is not installed
        except Exception as err:  # noqa: BLE001 - any unpickling failure
            raise _unreadable(filename, err) from None
    try:
        with safe_pickle.placeholders_made() as made:
            checkpoint = _torch_load_safely(filename, map_location)
    except safe_pickle.RefusedGlobal as err:
        if trusted_err is not None:
            raise _unreadable(filename, trusted_err) from None
        raise UnsafeCheckpointError(refusal_message(filename, err)) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure
        raise _unreadable(filename, err) from None
    if made:
        warn_once(
            f'placeholders:{osp.abspath(filename)}',
            f'mmvim: {filename} holds objects of {", ".join(sorted(made))}, '
            'which mmvim does not import while loading a checkpoint; they '
            'are kept as inert data (mmvim.checkpoint.UnpickledObject: '
            'class name, items, state). The tensors are not affected.',
            stacklevel=2)
    return checkpoint


CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file,
                                 force=True)


def url_cache_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where :func:`load_url_checkpoint` keeps ``url``: the torch hub cache
    (``<hub dir>/checkpoints/<file name>``) unless ``model_dir`` is given."""
    from urllib.parse import unquote, urlparse

    from torch.hub import get_dir
    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(unquote(urlparse(url).path)))


def load_url_checkpoint(url: str, map_location: Optional[Any] = None,
                        model_dir: Optional[str] = None) -> Any:
    """Download ``url`` once into the torch hub cache (``checkpoints/``) and
    open it with :func:`load_checkpoint_file` (release files such as
    MambaVision's hold an ``argparse.Namespace``, which mmengine's own URL
    loader cannot open on torch >= 2.6)."""
    from torch.hub import download_url_to_file
    cached = url_cache_path(url, model_dir)
    os.makedirs(osp.dirname(cached), exist_ok=True)
    if not osp.isfile(cached):
        download_url_to_file(url, cached, progress=True)
    return load_checkpoint_file(cached, map_location)


CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                 loader=load_url_checkpoint, force=True)
