"""Checkpoints through torch's weights-only unpickler, with named stand-ins.

``torch.load(weights_only=True)`` builds nothing but tensors, storages and
plain containers, and refuses every other global, opcode (``NEWOBJ_EX``:
keyword arguments to C constructors) and format (the legacy tar files).
The metadata real checkpoints carry besides the weights enters through
``torch.serialization.safe_globals`` as *stand-ins*, each registered under
the name the file uses and each checking what the file gives it before
anything else sees it:

* ``argparse.Namespace`` (the ``args`` of Vim/DeiT/MambaVision releases):
  string-keyed attributes only;
* ``yacs.config.CfgNode`` (VMamba's ``config``): a plain ``OrderedDict``,
  its flags as attributes, whether or not yacs is installed;
* numpy dtypes, scalars and arrays (numpy 1.x ``numpy.core`` and 2.x
  ``numpy._core`` names): a dtype's state must be one numpy itself writes
  for a plain (no object, no field) dtype, and an array's bytes must match
  its shape; numpy's own ``__setstate__`` never sees file data;
* mmengine's ``ConfigDict``, ``Config``, ``HistoryBuffer`` (with its
  statistics methods, by their own names) and ``MessageHub``: their
  attributes checked by name and type.

After the load, :func:`finish` walks the result once: pending numpy arrays
become arrays, stand-in objects their real classes, and every tensor is
checked so that a file cannot make the loader allocate much more than the
file holds (a view larger than its storage, stride-0 repetition, more
storage or views than the file's bytes). Sparse COO tensors must pass
torch's invariants check (indices within the size); other sparse layouts
are refused.
"""
from __future__ import annotations

import argparse
import collections
import math
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

__all__ = ['Refusal', 'stand_ins', 'finish']

_SLACK = 64 << 20  # what a file may add on top of its own bytes (views)


class Refusal(Exception):
    """What a file wants that mmvim's loader does not allow (``what``
    completes "the file wants to ...")."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


# -- numpy ---------------------------------------------------------------
class _DType:
    """``numpy.dtype(spec, align, copy)`` + its BUILD state: a plain
    (numeric, bool, string or datetime) dtype, no object or field."""

    _dtype = None

    def __init__(self, spec: Any, align: Any = False, copy: Any = False):
        if type(spec) is not str or len(spec) > 16 or \
                type(align) not in (bool, int) or \
                type(copy) not in (bool, int):
            raise Refusal(f'build a numpy dtype from {spec!r}')
        try:
            base = np.dtype(spec)
        except TypeError:
            raise Refusal(f'build a numpy dtype from {spec!r}') from None
        if base.kind not in 'biufcSUmM' or base.hasobject or \
                base.names is not None or base.subdtype is not None:
            raise Refusal(f'build a numpy dtype of kind {base.kind!r}')
        self._base = base
        self._dtype = base

    def __setstate__(self, state: Any) -> None:
        base = getattr(self, '_base', None)
        for order in '<>|=':
            candidate = base.newbyteorder(order) if base is not None \
                else None
            if candidate is not None and type(state) is tuple and \
                    state == candidate.__reduce__()[2]:
                self._dtype = candidate
                return
        raise Refusal('set a numpy dtype state that numpy does not write '
                      'for a plain dtype')

    def result(self) -> np.dtype:
        if self._dtype is None:
            raise Refusal('leave a numpy dtype unbuilt')
        return self._dtype


class _Array:
    """``numpy.ndarray`` as ``numpy._core.multiarray._reconstruct`` makes
    it, filled by BUILD: its bytes must be exactly shape x itemsize."""

    _array = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise Refusal('call numpy.ndarray')

    def __setstate__(self, state: Any) -> None:
        if self._array is not None or type(state) is not tuple or \
                len(state) != 5:
            raise Refusal('set a numpy array state twice or of another '
                          'layout')
        version, shape, dtype, fortran, raw = state
        if version != 1 or type(dtype) is not _DType or \
                type(fortran) is not bool or \
                type(raw) not in (bytes, bytearray) or \
                type(shape) is not tuple or len(shape) > 32 or \
                not all(type(n) is int and n >= 0 for n in shape):
            raise Refusal('set a numpy array state of another layout')
        dtype = dtype.result()
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise Refusal(f'make a numpy array of shape {shape} from '
                          f'{len(raw)} bytes')
        self._array = np.frombuffer(bytearray(raw), dtype=dtype).reshape(
            shape, order='F' if fortran else 'C')

    def result(self) -> np.ndarray:
        if self._array is None:
            raise Refusal('leave a numpy array unbuilt')
        return self._array


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _Array:
    # numpy pickles an empty array here, then fills it through BUILD
    if subtype is not _Array or shape != (0, ) or dtype not in (b'b', 'b'):
        raise Refusal('call numpy _reconstruct with other arguments')
    return _Array.__new__(_Array)


def _scalar(dtype: Any, *data: Any) -> np.generic:
    if type(dtype) is not _DType or len(data) != 1 or \
            type(data[0]) is not bytes or \
            len(data[0]) != dtype.result().itemsize:
        raise Refusal('call numpy scalar with other arguments')
    return np.frombuffer(data[0], dtype=dtype.result())[0].copy()


# -- classes whose objects a file builds (NEWOBJ + BUILD) ------------------
def _checked_state(cls: type, state: Any, kinds: Dict[str, tuple]) -> dict:
    """``state`` if it is a dict of the attributes ``kinds`` names, each of
    one of the listed types."""
    if type(state) is not dict or not all(
            type(state.get(k)) in kinds.get(k, ()) for k in state):
        raise Refusal(f'set attributes of {cls.__name__} other than '
                      f'{", ".join(sorted(kinds))}')
    return state


class _StandIn:
    """A stand-in for a class of attributes: created by NEWOBJ, filled by
    a checked BUILD, turned into ``real`` by :func:`finish`."""

    real: type = object
    kinds: Dict[str, tuple] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise Refusal(f'call {self.real.__module__}.{self.real.__name__}')

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(_checked_state(self.real, state, self.kinds))

    def become_real(self) -> Any:
        object.__setattr__(self, '__class__', self.real)
        return self


def _stand_in_classes() -> List[type]:
    from mmengine.config import Config, ConfigDict
    from mmengine.logging import HistoryBuffer, MessageHub

    class Namespace(_StandIn, argparse.Namespace):
        real = argparse.Namespace

        def __setstate__(self, state: Any) -> None:
            if type(state) is not dict or \
                    not all(type(k) is str for k in state):
                raise Refusal('set non-string attributes of a Namespace')
            self.__dict__.update(state)

    history_kinds = {'max_length': (int, ), '_log_history': (_Array, ),
                     '_count_history': (_Array, ),
                     'statistics_methods': (dict, )}

    class History(_StandIn, HistoryBuffer):
        real, kinds = HistoryBuffer, history_kinds

        def __setstate__(self, state: Any) -> None:
            state = dict(_checked_state(HistoryBuffer, state, self.kinds))
            methods = state.pop('statistics_methods', {})
            # each statistic under its own name: HistoryBuffer keeps them
            # in one dict of the class, shared by the whole process
            if not all(type(k) is str and
                       v is getattr(HistoryBuffer, k, None)
                       for k, v in methods.items()):
                raise Refusal('rename HistoryBuffer statistics')
            self.__dict__.update(state)

    dict_kinds = (dict, collections.OrderedDict)

    class Hub(_StandIn, MessageHub):
        real = MessageHub
        kinds = {'_instance_name': (str, ), '_log_scalars': dict_kinds,
                 '_runtime_info': dict_kinds, '_resumed_keys': dict_kinds}

        def __init__(self, name: str = '', *args: Any, **kwargs: Any):
            _StandIn.__init__(self)  # mmengine's metaclass wants `name`

    class Cfg(_StandIn, Config):
        real = Config

        def __setstate__(self, state: Any) -> None:
            kinds = ((ConfigDict, ), (str, type(None)), (str, type(None)),
                     (dict, ), (bool, ), (set, ))
            if type(state) is not tuple or len(state) != len(kinds) or \
                    not all(type(s) in k for s, k in zip(state, kinds)):
                raise Refusal('set a Config state of another layout')
            Config.__setstate__(self, state)

    return [Namespace, History, Hub, Cfg]


def _config_dict(*args: Any) -> Any:
    from mmengine.config import ConfigDict
    if len(args) > 1 or (args and type(args[0]) is not dict):
        raise Refusal('call ConfigDict with other arguments')
    return ConfigDict(*args)


def _statistic(cls: Any, name: Any) -> Any:
    """``getattr(HistoryBuffer, name)`` for its statistics methods: how
    mmengine pickles them."""
    from mmengine.logging import HistoryBuffer
    if getattr(cls, 'real', None) is not HistoryBuffer or \
            type(name) is not str or \
            name not in {'min', 'max', 'current', 'mean',
                         *HistoryBuffer._statistics_methods}:
        owner = getattr(getattr(cls, 'real', cls), '__name__',
                        type(cls).__name__)
        shown = repr(name) if type(name) is str else type(name).__name__
        raise Refusal(f'call getattr({owner}, {shown})')
    return getattr(HistoryBuffer, name)


_STAND_INS: List[Tuple[Any, str]] = []


def stand_ins() -> List[Tuple[Any, str]]:
    """``(stand-in, 'module.Name')`` pairs for
    ``torch.serialization.safe_globals``."""
    if not _STAND_INS:
        namespace, history, hub, cfg = _stand_in_classes()
        pairs = [
            (namespace, 'argparse.Namespace'),
            (collections.OrderedDict, 'yacs.config.CfgNode'),
            (_DType, 'numpy.dtype'), (_Array, 'numpy.ndarray'),
            (_config_dict, 'mmengine.config.config.ConfigDict'),
            (cfg, 'mmengine.config.config.Config'),
            (history, 'mmengine.logging.history_buffer.HistoryBuffer'),
            (hub, 'mmengine.logging.message_hub.MessageHub'),
            (_statistic, 'builtins.getattr')]
        for core in ('numpy.core', 'numpy._core'):
            pairs += [(_scalar, f'{core}.multiarray.scalar'),
                      (_reconstruct, f'{core}.multiarray._reconstruct')]
        _STAND_INS.extend(pairs)
    return list(_STAND_INS)


# -- after the load --------------------------------------------------------
_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray,
          torch.dtype, torch.device, torch.layout, torch.memory_format,
          torch.qscheme, np.generic, np.dtype, np.ndarray)


class _Finisher:
    """One walk over a loaded object: stand-ins replaced, tensors
    checked against what the file holds (``file_bytes``)."""

    def __init__(self, file_bytes: int) -> None:
        self.file_bytes = file_bytes
        self.memo: Dict[int, Any] = {}
        self.storages: Dict[Tuple[str, int], int] = {}
        self.view_bytes = 0

    def __call__(self, obj: Any) -> Any:
        key = id(obj)
        if key in self.memo:
            return self.memo[key]
        kind = type(obj)
        if kind in (_DType, _Array):
            out = self.memo[key] = obj.result()
            return out
        if isinstance(obj, _ATOMS):
            return obj
        self.memo[key] = obj
        if isinstance(obj, torch.Tensor):
            self.tensor(obj)
        elif isinstance(obj, (torch.UntypedStorage, torch.TypedStorage)):
            self.storage(obj.untyped_storage() if kind is
                         torch.TypedStorage else obj)
        elif kind is tuple or kind is torch.Size:
            items = [self(x) for x in obj]
            if any(a is not b for a, b in zip(items, obj)):
                obj = self.memo[key] = tuple(items)
            return obj
        elif kind is list:
            obj[:] = [self(x) for x in obj]
        elif kind in (set, frozenset):
            self.keys(obj)
        elif isinstance(obj, dict):
            self.keys(obj)
            for k, v in list(dict.items(obj)):
                new = self(v)
                if new is not v:
                    dict.__setitem__(obj, k, new)
        elif isinstance(obj, _StandIn):
            obj = obj.become_real()
        else:
            return obj
        attrs = getattr(obj, '__dict__', None)
        if attrs:
            self(attrs)
        return obj

    @staticmethod
    def keys(items: Any) -> None:
        if any(type(k) in (_DType, _Array) or isinstance(k, torch.Tensor)
               for k in items):
            raise Refusal('use a tensor or a numpy object as a key')

    def storage(self, storage: torch.UntypedStorage) -> None:
        if storage.device.type != 'meta':
            where = (str(storage.device), storage.data_ptr())
            self.storages[where] = storage.nbytes()

    def tensor(self, t: torch.Tensor) -> None:
        if t.layout is torch.sparse_coo:
            try:  # torch's own check of indices against the size
                torch.sparse_coo_tensor(t._indices(), t._values(), t.size(),
                                        check_invariants=True)
            except RuntimeError as err:
                raise Refusal(f'load a sparse tensor that fails torch\'s '
                              f'invariants ({str(err)[:120]})') from None
            self(t._indices())
            self(t._values())
            return
        if t.layout is not torch.strided:
            raise Refusal(f'load a tensor of layout {t.layout}')
        if t.device.type == 'meta':
            return
        storage = t.untyped_storage()
        size = t.element_size()
        need = t.numel() * size
        end = (t.storage_offset() + 1 + sum(
            (n - 1) * s for n, s in zip(t.shape, t.stride()))) * size \
            if need else 0
        if need > storage.nbytes() or end > storage.nbytes():
            raise Refusal(
                f'view {storage.nbytes()} stored bytes as a tensor of '
                f'shape {tuple(t.shape)}, stride {t.stride()} ({need} '
                'bytes): a view that runs past or repeats its storage')
        self.storage(storage)
        self.view_bytes += need

    def check_totals(self) -> None:
        stored = sum(self.storages.values())
        if stored > self.file_bytes + _SLACK or \
                self.view_bytes > 2 * self.file_bytes + _SLACK:
            raise Refusal(
                f'make {stored} bytes of tensor storage and {self.view_bytes}'
                f' bytes of tensor views from a file of {self.file_bytes} '
                'bytes')


def finish(obj: Any, file_bytes: int) -> Any:
    """``obj`` (what ``torch.load`` returned under :func:`stand_ins`) with
    numpy arrays and dtypes and the real classes in place of stand-ins;
    raises :class:`Refusal` for a tensor that views more than its storage
    or for more tensor data than ``file_bytes`` allows."""
    walk = _Finisher(file_bytes)
    try:
        obj = walk(obj)
    except RecursionError:
        raise Refusal('nest containers deeper than Python can follow'
                      ) from None
    walk.check_totals()
    return obj
