"""Opening checkpoint files without running what they hold.

A ``.pth`` file is a pickle, and a pickle can name any Python function and
call it while it loads. mmengine calls ``torch.load`` without
``weights_only``, and a full unpickle runs whatever a file names. mmvim
therefore replaces mmengine's loader for local paths and URLs with
:func:`load_checkpoint_file`, which reads every file with torch's own
weights-only unpickler (``torch.load(weights_only=True)``) and the stand-ins
of :mod:`mmvim.checkpoint.weights_only` for the metadata real checkpoints
carry (``argparse.Namespace``, a yacs ``CfgNode`` with or without yacs,
numpy values, mmengine's resume state).

Before torch sees a file, :func:`checkpoint_file_problem` reads its
structure without unpickling it and refuses, with one line naming the
file:

* anything but torch's zip format or torch's legacy (non-tar) pickle
  format: no tar archive is ever opened (torch's legacy tar reader
  extracts members to disk before reading them);
* a compressed zip record (``torch.save`` stores every record as it is, so
  a deflated one can only be a decompression bomb);
* records or declared storages larger than the file itself.

A file that names a global outside the allowlist is refused naming it
(``torch.serialization.get_unsafe_globals_in_checkpoint``), as is one that
uses an opcode torch's unpickler refuses (``NEWOBJ_EX``: keyword arguments
to C constructors), and one whose tensors view more than their storage
(stride-0 repetition: the loader must not allocate much more than the file
holds). Nothing it names is run. Setting ``MMVIM_TRUST_CHECKPOINTS=1``
(the tools' ``--trust-checkpoint``) is the user's explicit choice of a full
unpickle (``torch.load(weights_only=False)``).

A file that cannot be a checkpoint (empty, truncated by an interrupted save,
a text file, a TorchScript archive or another format) raises
:class:`CheckpointFileError` with one line naming the file and the problem.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import os
import os.path as osp
import pickle
import pickletools
import re
import tarfile
import zipfile
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from . import weights_only
from .common import CheckpointFileError, UnsafeCheckpointError

__all__ = ['load_checkpoint_file', 'url_cache_path', 'checkpoint_file_problem',
           'TRUST_ENV', 'trust_checkpoints', 'add_trust_flag',
           'apply_trust_flag']

_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default (zip) format
_PICKLE_MAGIC = b'\x80'  # a pickle: torch's legacy format
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # the first pickle of a legacy file
TRUST_ENV = 'MMVIM_TRUST_CHECKPOINTS'
_TRUE = ('1', 'true', 'yes', 'on')
_OPT_IN = (f'if you trust this file, set {TRUST_ENV}=1 (tools: '
           '--trust-checkpoint) to load it with a full unpickle')


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


# -- the file's structure, read without unpickling ---------------------------
class _Global(str):
    """A GLOBAL a pickle names ('module.name')."""


def _scan_pickle(f) -> Tuple[Any, List[Any], Set[str]]:
    """The pickle at ``f``'s position, read with pickletools and a model of
    its stack (nothing is built or called): the value it ends with when
    that is a plain literal, the persistent ids it declares (torch's
    storages) and the globals it names. ``f`` is left after its STOP."""
    stack: List[Any] = []
    marks: List[int] = []
    memo: Dict[Any, Any] = {}
    pids: List[Any] = []
    names: Set[str] = set()
    opaque = object()
    result: Any = opaque
    for op, arg, _ in pickletools.genops(f):
        name, before, after = op.name, op.stack_before, op.stack_after
        if name == 'MARK':
            marks.append(len(stack))
            continue
        if name in ('GLOBAL', 'STACK_GLOBAL'):
            if name == 'GLOBAL':
                module, attr = arg.split(' ', 1)
            else:
                module, attr = (str(x) for x in stack[-2:])
                del stack[-2:]
            module, attr = _compat_pickle.NAME_MAPPING.get(
                (module, attr), (_compat_pickle.IMPORT_MAPPING.get(
                    module, module), attr))
            names.add(f'{module}.{attr}')
            stack.append(_Global(f'{module}.{attr}'))
            continue
        if name in ('PUT', 'BINPUT', 'LONG_BINPUT', 'MEMOIZE'):
            memo[len(memo) if name == 'MEMOIZE' else arg] = stack[-1]
            continue
        if name in ('GET', 'BINGET', 'LONG_BINGET'):
            stack.append(memo.get(arg, opaque))
            continue
        if name in ('BINPERSID', 'PERSID'):
            pids.append(stack.pop() if name == 'BINPERSID' else arg)
            stack.append(opaque)
            continue
        if name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
            continue
        items = []
        if pickletools.markobject in before:
            start = marks.pop()
            items = stack[start:]
            del stack[start:]
            before = before[:before.index(pickletools.markobject)]
        if before:
            if name == 'STOP':
                result = stack[-1]
            del stack[-len(before):]
        if name == 'TUPLE':
            stack.append(tuple(items))
        elif name == 'EMPTY_TUPLE':
            stack.append(())
        elif after and not op.stack_before and arg is not None:
            stack.append(arg)  # a literal
        else:
            stack.extend([opaque] * len(after))
    return result, pids, names


def _legacy_layout(filename: str) -> Tuple[Optional[str], Set[str]]:
    """What is wrong with a legacy-format file (None if nothing) and the
    globals its main pickle names. The layout: the magic number, the
    protocol version and the system info (three pickles), the object
    pickle, the storage keys (a pickle), then each storage's bytes."""
    size = osp.getsize(filename)
    with open(filename, 'rb') as f:
        try:
            magic, _, _ = _scan_pickle(f)
            if magic != _LEGACY_MAGIC:
                return ('is not a PyTorch checkpoint (a pickle that '
                        'torch.save did not write)'), set()
            _scan_pickle(f)
            _scan_pickle(f)
            _, pids, names = _scan_pickle(f)
            _scan_pickle(f)
        except (ValueError, EOFError, IndexError, TypeError) as err:
            return (f'is a damaged pickle ({type(err).__name__}: '
                    f'{str(err)[:120]})'), set()
        left = size - f.tell()
    allowed = torch._weights_only_unpickler._get_allowed_globals()
    declared: Dict[Any, int] = {}
    for pid in pids:
        if not (type(pid) is tuple and len(pid) >= 5 and
                pid[0] in ('storage', b'storage') and type(pid[4]) is int
                and pid[4] >= 0):
            continue  # torch's unpickler refuses what is not a storage
        kind = allowed.get(pid[1]) if type(pid[1]) is _Global else None
        if not hasattr(kind, 'dtype'):
            return f'declares a storage of type {pid[1]!r}', names
        declared[pid[2]] = pid[4] * torch._utils._element_size(kind.dtype)
    total = sum(declared.values())
    if total > left:
        return (f'declares {total} bytes of tensor storage, but only '
                f'{left} bytes follow its pickles: the loader would '
                'allocate more than the file holds, so mmvim refuses it '
                f'(nothing was read); {_OPT_IN}'), names
    return None, names


def _zip_layout(filename: str, size: int) -> Optional[str]:
    """What is wrong with a zip-format file (None if nothing)."""
    if not zipfile.is_zipfile(filename):
        return (f'is truncated ({size} bytes, the end of its zip '
                'archive is missing): it was not completely written, '
                'e.g. a save that was interrupted')
    try:
        with zipfile.ZipFile(filename) as archive:
            records = archive.infolist()
    except Exception as err:  # noqa: BLE001 - any damage to the index
        return (f'is a damaged zip archive ({type(err).__name__}: '
                f'{str(err)[:120]})')
    if any(r.filename.rsplit('/', 1)[-1] == 'constants.pkl'
           for r in records):
        return ('is a TorchScript archive (torch.jit.save), not a '
                'checkpoint: load it with torch.jit.load, or save its '
                'state_dict() with torch.save')
    if trust_checkpoints():
        return None
    packed = [r for r in records if r.compress_type != zipfile.ZIP_STORED
              or r.compress_size != r.file_size]
    if packed:
        return (f'holds a compressed record ({packed[0].filename}), which '
                'could expand to far more than the file: torch.save stores '
                'every record as it is, so mmvim refuses it (nothing was '
                f'read); {_OPT_IN}')
    declared = sum(r.file_size for r in records)
    past_end = [r for r in records if r.header_offset + r.file_size > size]
    if declared > size or past_end:
        return (f'declares {declared} bytes of records in {size} bytes '
                '(overlapping or truncated records), so mmvim refuses it '
                f'(nothing was read); {_OPT_IN}')
    return None


def checkpoint_file_problem(filename: str) -> Optional[str]:
    """What makes ``filename`` unreadable or unsafe as a torch checkpoint,
    read from its structure without unpickling anything (completes
    "checkpoint FILE ..."); None if it looks complete and well-formed.
    Unless the user trusts checkpoints, only torch's zip format (every
    record stored, within the file) and torch's legacy pickle format
    (declared storages within the file) pass; a tar archive never does."""
    if not osp.isfile(filename):
        return 'does not exist'
    size = osp.getsize(filename)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return _zip_layout(filename, size)
    tar = tarfile.is_tarfile(filename)
    if trust_checkpoints() and (tar or head.startswith(_PICKLE_MAGIC)):
        return None  # torch's legacy formats, the user's choice
    if tar:
        return ("is a tar archive (torch's pre-1.6 format, which torch "
                'unpacks to disk before reading it); mmvim never unpacks '
                f'one (nothing was written); {_OPT_IN}')
    if head.startswith(_PICKLE_MAGIC):
        return _legacy_layout(filename)[0]
    try:
        head.decode('utf-8')
        kind = 'a text file'
    except UnicodeDecodeError:
        kind = 'another format'
    return (f'is not a PyTorch checkpoint ({kind} starting with '
            f'{head[:8]!r})')


# -- loading -----------------------------------------------------------------
def _refused(filename: str, what: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f'checkpoint {filename} wants to {what} while loading; mmvim '
        f'refuses it (nothing was run). I{_OPT_IN[1:]}.')


def _unsafe_globals(filename: str) -> List[str]:
    """The globals ``filename`` names that neither torch nor mmvim's
    stand-ins allow (call inside ``safe_globals``)."""
    with open(filename, 'rb') as f:
        zipped = f.read(4) == _ZIP_MAGIC
    if zipped:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(
            filename))
    unpickler = torch._weights_only_unpickler
    allowed = {*unpickler._get_allowed_globals(),
               *unpickler._get_user_allowed_globals()}
    return sorted(_legacy_layout(filename)[1] - allowed)


def _weights_only_reason(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, from its message."""
    text = str(err)
    found = re.search(r'WeightsUnpickler error: (.+)', text) or \
        re.search(r'\n\n(.+)', text)
    reason = (found.group(1) if found else text).strip()
    opcode = re.fullmatch(r'Unsupported operand (\d+)', reason)
    if opcode:
        code = chr(int(opcode.group(1)))
        name = next((op.name for op in pickletools.opcodes
                     if op.code == code), f'#{opcode.group(1)}')
        reason = f'use the pickle opcode {name}'
        if name == 'NEWOBJ_EX':
            reason += ' (keyword arguments to a constructor)'
    return reason[:300]


def _load_weights_only(filename: str, map_location: Optional[Any]) -> Any:
    with torch.serialization.safe_globals(weights_only.stand_ins()):
        try:
            loaded = torch.load(filename, map_location=map_location,
                                weights_only=True)
        except weights_only.Refusal as err:
            raise _refused(filename, err.what) from None
        except pickle.UnpicklingError as err:
            try:  # name every global it wanted, not only the first
                unsafe = _unsafe_globals(filename)
            except pickle.UnpicklingError:
                unsafe = []
            raise _refused(filename, f'call {", ".join(unsafe)}' if unsafe
                           else _weights_only_reason(err)) from None
        except Exception as err:  # noqa: BLE001 - any unpickling failure
            raise _unreadable(filename, err) from None
    try:
        return weights_only.finish(loaded, osp.getsize(filename))
    except weights_only.Refusal as err:
        raise _refused(filename, err.what) from None


def _unreadable(filename: str, err: BaseException) -> CheckpointFileError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return CheckpointFileError(
        f'checkpoint {filename} could not be read by torch.load '
        f'({type(err).__name__}: {first[:200]})')


def load_checkpoint_file(filename: str, map_location: Optional[Any] = None
                         ) -> Any:
    """``torch.load`` a local checkpoint without running code stored in it.

    Tensors, mmengine's resume state and the metadata releases carry load
    as data through torch's weights-only unpickler and mmvim's stand-ins
    (:mod:`mmvim.checkpoint.weights_only`; a yacs ``CfgNode`` becomes an
    ``OrderedDict``). With ``MMVIM_TRUST_CHECKPOINTS=1`` the file is fully
    unpickled instead (a file that names a module which is not installed,
    such as yacs, then still loads through the stand-ins).

    Raises :class:`UnsafeCheckpointError` for a file that wants anything
    the loader does not allow, :class:`CheckpointFileError` for a missing,
    empty, truncated or foreign file (one line each: the file and what is
    wrong)."""
    filename = osp.expanduser(filename)
    problem = checkpoint_file_problem(filename)
    if problem:
        error = CheckpointFileError if problem.startswith(
            ('does not', 'is empty', 'is truncated', 'is a damaged',
             'is a TorchScript', 'is not a PyTorch')) else \
            UnsafeCheckpointError
        raise error(f'checkpoint {filename} {problem}.')
    if trust_checkpoints():
        try:
            return torch.load(filename, map_location=map_location,
                              weights_only=False)
        except (ImportError, AttributeError):
            pass  # a class of a module that is not installed (yacs)
        except Exception as err:  # noqa: BLE001 - any unpickling failure
            raise _unreadable(filename, err) from None
    return _load_weights_only(filename, map_location)


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
