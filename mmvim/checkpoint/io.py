"""Opening checkpoint files on torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine calls
``torch.load`` without the argument, so every checkpoint it writes (its
message hub pickles HistoryBuffer objects and numpy scalars) and official
release files holding an ``argparse.Namespace`` or numpy values fail to load,
including ``--resume`` and ``tools/test.py``. mmvim therefore replaces
mmengine's loader for local paths and URLs with :func:`load_checkpoint_file`: a
weights-only load first; if the file holds other Python objects, a full load
with a one-time warning that says so (a full unpickle can run code stored in
the file: only load checkpoints you trust).

A file that cannot be a checkpoint (empty, truncated by an interrupted save,
a text file or another format) raises :class:`CheckpointFileError` with one
line naming the file and the problem, instead of torch's zip-reader
traceback or a ``KeyError`` from its unpickler.
"""
from __future__ import annotations

import os.path as osp
import pickle
import re
import zipfile
from typing import Any, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..utils.misc import warn_once
from .common import CheckpointFileError

__all__ = ['load_checkpoint_file', 'url_cache_path', 'checkpoint_file_problem']

_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default (zip) format
_PICKLE_MAGIC = b'\x80'  # a pickle: torch's legacy format


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


def load_checkpoint_file(filename: str, map_location: Optional[Any] = None
                         ) -> Any:
    """``torch.load`` a trusted local checkpoint on any torch version.

    Raises :class:`CheckpointFileError` (one line: the file and what is
    wrong) for a missing, empty, truncated or foreign file."""
    filename = osp.expanduser(filename)
    problem = checkpoint_file_problem(filename)
    if problem:
        raise CheckpointFileError(f'checkpoint {filename} {problem}.')
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as err:
        # weights-only refused a Python object; a full load may open it
        refused = err
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise _unreadable(filename, err) from None
    try:
        checkpoint = torch.load(filename, map_location=map_location,
                                weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure
        raise _unreadable(filename, err) from None
    found = re.findall(r'GLOBAL ([\w.]+)', str(refused))
    reason = (f'e.g. {found[0]}' if found else
              'not a plain tensor state_dict')
    warn_once(
        f'full-unpickle:{osp.abspath(filename)}',
        f'mmvim: {filename} holds Python objects besides tensors '
        f'({reason}); loading it with torch.load(weights_only=False), '
        'which can execute code stored in the file. Only load '
        'checkpoints you trust.', stacklevel=2)
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
    import os

    from torch.hub import download_url_to_file
    cached = url_cache_path(url, model_dir)
    os.makedirs(osp.dirname(cached), exist_ok=True)
    if not osp.isfile(cached):
        download_url_to_file(url, cached, progress=True)
    return load_checkpoint_file(cached, map_location)


CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                 loader=load_url_checkpoint, force=True)
