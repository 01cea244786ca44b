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
"""
from __future__ import annotations

import os.path as osp
import pickle
import re
from typing import Any, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..utils.misc import warn_once

__all__ = ['load_checkpoint_file', 'url_cache_path']


def load_checkpoint_file(filename: str, map_location: Optional[Any] = None
                         ) -> Any:
    """``torch.load`` a trusted local checkpoint on any torch version."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename!r} does not exist.')
    try:
        return torch.load(filename, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.findall(r'GLOBAL ([\w.]+)', str(err))
        reason = (f'e.g. {found[0]}' if found else
                  'not a plain tensor state_dict')
        warn_once(
            f'full-unpickle:{osp.abspath(filename)}',
            f'mmvim: {filename} holds Python objects besides tensors '
            f'({reason}); loading it with torch.load(weights_only=False), '
            'which can execute code stored in the file. Only load '
            'checkpoints you trust.', stacklevel=2)
        return torch.load(filename, map_location=map_location,
                          weights_only=False)


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
