"""A pickle module for ``torch.load`` that never runs code stored in a file.

A pickle is a small program: it names globals (``os.system``, a class) and
calls them. ``torch.load(f, weights_only=False, pickle_module=safe_pickle)``
(this module) reads torch's zip and legacy files with :class:`Unpickler`,
which executes no global it does not know:

* a global is looked up in a fixed table (:func:`allowed_globals`), never
  imported. Any other name (``os.system``, ``builtins.eval``, ``yacs.config.
  CfgNode`` whether or not yacs is installed) stands for itself as an inert
  reference;
* calling a global (pickle's REDUCE, INST, OBJ) is allowed for the table's
  callables, which are safe with whatever data a file holds (their arguments
  are checked where they could reach something else). Calling anything else
  raises :class:`RefusedGlobal` naming it, before anything runs;
* an object of a class that is not in the table, which a pickle creates
  without calling it (``cls.__new__`` + its state, the default for plain
  classes and dict subclasses such as yacs' ``CfgNode``), becomes an
  :class:`UnpickledObject`: a dict holding the object's dict items, that
  records the class name, the constructor arguments and the state;
* setting state (BUILD) and filling containers only touch instances created
  while loading, never a class or function of the table.

The table holds what checkpoints carry: torch's tensor and storage rebuild
functions, dtypes and ``torch.Size`` (torch's own weights-only allowlist),
``collections.OrderedDict``/``Counter``/``defaultdict``, sets, bytes,
``argparse.Namespace`` (Vim/DeiT/MambaVision training scripts save their
``args``), numpy arrays, scalars and dtypes (numpy 1.x ``numpy.core`` and 2.x
``numpy._core`` names), ``datetime`` values, paths (as pure paths), and
mmengine's resume objects (``HistoryBuffer`` with its statistics methods,
``ConfigDict``).
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import copyreg
import functools
import pickle
import sys
import threading
from typing import Any, Dict, Iterable, Iterator, Optional, Set

__all__ = ['Unpickler', 'load', 'UnpicklingError', 'RefusedGlobal',
           'UnpickledObject', 'allowed_globals', 'placeholders_made']

UnpicklingError = pickle.UnpicklingError


class RefusedGlobal(pickle.UnpicklingError):
    """The file wants to run something that is not on the allowlist.

    ``global_name`` is the global (``'os.system'``), ``action`` what the file
    does with it (``'call os.system'``)."""

    def __init__(self, global_name: str, action: str) -> None:
        super().__init__(f'the pickle wants to {action}')
        self.global_name = global_name
        self.action = action


class _GlobalRef:
    """A global the table does not hold: only its name. Calling it (from
    the pickle or from an allowed function handed it as an argument)
    raises :class:`RefusedGlobal`."""

    __slots__ = ('name', )

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args, **kwargs):
        raise RefusedGlobal(self.name, f'call {self.name}')

    def __repr__(self) -> str:
        return f'<global {self.name} (not imported)>'


class UnpickledObject(dict):
    """An object of a class mmvim does not create while loading (e.g.
    ``yacs.config.CfgNode``, with or without yacs installed): inert data.

    The dict holds the object's dict items (a dict subclass such as
    CfgNode: its keys and values, nested ones as UnpickledObjects too);
    ``global_name`` is the class's ``module.name``, ``args``/``kwargs``
    what its ``__new__`` was given, ``state`` what ``__setstate__`` would
    have been given (e.g. the instance ``__dict__``), ``listitems`` the
    items of a list or set subclass."""

    __slots__ = ('global_name', 'args', 'kwargs', 'state', 'listitems')

    def __init__(self, global_name: str, args: tuple = (),
                 kwargs: Optional[dict] = None) -> None:
        super().__init__()
        self.global_name = global_name
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.state: Any = None
        self.listitems: list = []

    def __repr__(self) -> str:
        parts = [repr(self.global_name)]
        if len(self):
            parts.append(f'items={dict(self)!r}')
        for name in ('args', 'kwargs', 'state', 'listitems'):
            if getattr(self, name):
                parts.append(f'{name}={getattr(self, name)!r}')
        return f'UnpickledObject({", ".join(parts)})'

    def __reduce__(self):
        # saved again (e.g. inside a resumed run's message hub), it loads
        # back through the allowlisted _rebuild_unpickled
        return (_rebuild_unpickled, (self.global_name, self.args,
                                     self.kwargs, self.state,
                                     self.listitems, dict(self)))


def _rebuild_unpickled(global_name, args, kwargs, state, listitems, items
                       ) -> UnpickledObject:
    obj = _placeholder(str(global_name), tuple(args), dict(kwargs))
    obj.state = state
    obj.listitems = list(listitems)
    obj.update(dict(items))
    return obj


# -- what a load met -------------------------------------------------------
_LOCAL = threading.local()


@contextlib.contextmanager
def placeholders_made() -> Iterator[Set[str]]:
    """Collects the class names that became :class:`UnpickledObject`
    placeholders during the loads inside it (``with placeholders_made() as
    names: torch.load(...)``)."""
    outer = getattr(_LOCAL, 'made', None)
    made = _LOCAL.made = set()
    try:
        yield made
    finally:
        _LOCAL.made = outer
        if outer is not None:
            outer.update(made)


def _placeholder(name: str, args: tuple = (), kwargs: Optional[dict] = None
                 ) -> UnpickledObject:
    made = getattr(_LOCAL, 'made', None)
    if made is not None:
        made.add(name)
    return UnpickledObject(name, args, kwargs)


def _name_of(obj: Any) -> str:
    """The global ``obj`` was loaded as, or what it is."""
    if isinstance(obj, _GlobalRef):
        return obj.name
    known = _tables().names.get(id(obj))
    if known:
        return known
    if isinstance(obj, type) or callable(obj):
        module = getattr(obj, '__module__', None) or ''
        name = getattr(obj, '__qualname__', None) or \
            getattr(obj, '__name__', None) or type(obj).__name__
        return f'{module}.{name}' if module else name
    return f'a {type(obj).__module__}.{type(obj).__qualname__} object'


# -- creating objects --------------------------------------------------------
def _new_object(cls: Any, args: tuple, kwargs: Optional[dict] = None) -> Any:
    """``cls.__new__(cls, *args, **kwargs)`` (pickle's NEWOBJ) for a class
    of the table; an :class:`UnpickledObject` for any other name."""
    if isinstance(cls, _GlobalRef):
        return _placeholder(cls.name, args, kwargs)
    if isinstance(cls, type) and cls in _tables().newable:
        return cls.__new__(cls, *args, **(kwargs or {}))
    raise RefusedGlobal(_name_of(cls), f'create a {_name_of(cls)} object')


def _checked_newobj(cls, *args):
    return _new_object(cls, args)


def _checked_newobj_ex(cls, args, kwargs):
    return _new_object(cls, tuple(args), dict(kwargs))


def _checked_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocols 0 and 1) for a class of the
    table and a builtin base; a placeholder for any other class."""
    if isinstance(cls, _GlobalRef):
        obj = _placeholder(cls.name)
        if base is dict and isinstance(state, dict):
            obj.update(state)
        elif base in (list, set, frozenset, tuple) and state is not None:
            obj.listitems.extend(state)
        elif base is not object:
            obj.args = (state, )
        return obj
    if isinstance(cls, type) and cls in _tables().newable and \
            base in _tables().bases and issubclass(cls, base):
        return copyreg._reconstructor(cls, base, state)
    raise RefusedGlobal('copyreg._reconstructor',
                        f'call copyreg._reconstructor on {_name_of(cls)}')


def _checked_getattr(obj, name, *default):
    """``getattr`` for the attributes a known class pickles by name:
    mmengine's HistoryBuffer stores its statistics methods as
    ``getattr(HistoryBuffer, 'mean')``."""
    names = _tables().attributes.get(id(obj))
    if names is not None and isinstance(name, str) and not default and \
            name in names():
        return getattr(obj, name)
    raise RefusedGlobal('builtins.getattr',
                        f'call builtins.getattr({_name_of(obj)}, {name!r})')


def _checked_encode(obj, encoding='utf-8', errors='strict'):
    """``_codecs.encode`` as protocol 2 uses it for bytes: a str in
    latin1."""
    if type(obj) is str and encoding in ('latin1', 'latin-1') and \
            errors == 'strict':
        return obj.encode('latin1')
    raise RefusedGlobal('_codecs.encode',
                        f'call _codecs.encode with encoding {encoding!r}')


def _byte_source(kind: type, args: tuple):
    if not args or (len(args) == 1 and isinstance(args[0],
                                                  (bytes, bytearray, list))):
        return kind(*args)
    if len(args) == 2 and type(args[0]) is str and args[1] in ('latin1',
                                                               'latin-1'):
        return kind(args[0], 'latin1')  # protocol 2's bytearray
    raise RefusedGlobal(f'builtins.{kind.__name__}',
                        f'call builtins.{kind.__name__} with '
                        f'{len(args)} arguments')


def _checked_bytes(*args):
    return _byte_source(bytes, args)


def _checked_bytearray(*args):
    return _byte_source(bytearray, args)


def _checked_defaultdict(*args):
    from collections import defaultdict
    factory = args[0] if args else None
    if not any(factory is f for f in (None, list, dict, set, int, float,
                                      str, tuple)):
        raise RefusedGlobal('collections.defaultdict',
                            'call collections.defaultdict with the factory '
                            f'{_name_of(factory)}')
    return defaultdict(*args)


def _pure_path(flavour):
    def make(*parts):
        if not all(isinstance(p, str) for p in parts):
            raise RefusedGlobal('pathlib.Path', 'call pathlib.Path with '
                                'parts that are not str')
        return flavour(*parts)
    return make


def _checked_rebuild_from_type(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2`` (a tensor with attributes)
    with torch's own rebuild function and a tensor class."""
    import torch
    tables = _tables()
    if id(func) not in tables.torch_rebuild or not (
            isinstance(new_type, type) and issubclass(new_type, torch.Tensor)
            and new_type in tables.newable):
        raise RefusedGlobal('torch._tensor._rebuild_from_type_v2',
                            'call torch._tensor._rebuild_from_type_v2 with '
                            f'{_name_of(func)} and {_name_of(new_type)}')
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _checked_load_from_bytes(data):
    """``torch.storage._load_from_bytes``: a storage pickled with plain
    pickle (not torch.save) is a whole torch file, read through this module
    too (torch's own function would fully unpickle it)."""
    import io

    import torch
    if not isinstance(data, bytes):
        raise RefusedGlobal('torch.storage._load_from_bytes',
                            'call torch.storage._load_from_bytes with '
                            f'{_name_of(data)}')
    return torch.load(io.BytesIO(data), weights_only=False,
                      pickle_module=sys.modules[__name__])


def _numpy_wrappers() -> Dict[str, Any]:
    import numpy as np
    reconstruct = np.empty(0).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.empty(1).__reduce_ex__(5)[0]  # pickle protocol 5

    def checked_reconstruct(subtype, shape, dtype):
        # numpy pickles an empty array here and fills it from the state
        if subtype is not np.ndarray or shape != (0, ) or \
                dtype not in (b'b', 'b'):
            raise RefusedGlobal('numpy._core.multiarray._reconstruct',
                                'call numpy _reconstruct on '
                                f'{_name_of(subtype)}')
        return reconstruct(subtype, shape, dtype)

    def checked_scalar(dtype, *data):
        if not isinstance(dtype, np.dtype) or len(data) > 1 or (
                data and not dtype.hasobject and
                not isinstance(data[0], bytes)):
            raise RefusedGlobal('numpy._core.multiarray.scalar',
                                'call numpy scalar with '
                                f'{_name_of(dtype)}')
        return scalar(dtype, *data)

    def checked_dtype(spec, align=False, copy=False):
        # numpy 2 pickles ('f8', False, True); Python 2 era ones (.., 0, 1)
        if type(spec) is not str or type(align) not in (bool, int) or \
                type(copy) not in (bool, int):
            raise RefusedGlobal('numpy.dtype', 'call numpy.dtype with '
                                f'{_name_of(spec)}')
        return np.dtype(spec, align, copy)

    def checked_frombuffer(buf, dtype, shape, order):
        if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)) or \
                not isinstance(dtype, np.dtype) or \
                not isinstance(shape, tuple) or order not in ('C', 'F'):
            raise RefusedGlobal('numpy._core.numeric._frombuffer',
                                'call numpy _frombuffer with '
                                f'{_name_of(buf)}')
        return frombuffer(buf, dtype, shape, order)

    table = {'numpy.ndarray': np.ndarray, 'numpy.dtype': checked_dtype}
    for core in ('numpy.core', 'numpy._core'):
        table[f'{core}.multiarray._reconstruct'] = checked_reconstruct
        table[f'{core}.multiarray.scalar'] = checked_scalar
        table[f'{core}.numeric._frombuffer'] = checked_frombuffer
    return table


class _Tables:
    """The allowlist, built once: ``globals`` (name -> object), the ids of
    what may be called, the classes that may be created and built, the
    containers that may be filled."""

    def __init__(self) -> None:
        import argparse
        import collections
        import datetime
        import pathlib

        import numpy as np
        import torch
        from mmengine.config import ConfigDict
        from mmengine.logging import HistoryBuffer
        from torch._weights_only_unpickler import (
            _get_allowed_globals,
            _tensor_rebuild_functions,
        )

        table: Dict[str, Any] = dict(_get_allowed_globals())
        callable_: list = [v for v in table.values() if callable(v)]
        self.newable: Set[type] = {v for v in table.values()
                                   if isinstance(v, type)}
        self.torch_rebuild = {id(f) for f in _tensor_rebuild_functions()}
        plain = {
            'builtins.object': object, 'builtins.dict': dict,
            'builtins.list': list, 'builtins.tuple': tuple,
            'builtins.int': int, 'builtins.float': float,
            'builtins.str': str, 'builtins.bool': bool,
        }
        checked = {
            '_codecs.encode': _checked_encode,
            'builtins.bytes': _checked_bytes,
            'builtins.bytearray': _checked_bytearray,
            'builtins.getattr': _checked_getattr,
            'copyreg._reconstructor': _checked_reconstructor,
            'copyreg.__newobj__': _checked_newobj,
            'copyreg.__newobj_ex__': _checked_newobj_ex,
            'collections.defaultdict': _checked_defaultdict,
            'torch._tensor._rebuild_from_type_v2':
                _checked_rebuild_from_type,
            'torch.storage._load_from_bytes': _checked_load_from_bytes,
            'mmvim.checkpoint.safe_pickle._rebuild_unpickled':
                _rebuild_unpickled,
        }
        for module in ('pathlib', 'pathlib._local'):
            for name in ('Path', 'PosixPath', 'PurePath', 'PurePosixPath'):
                checked[f'{module}.{name}'] = _pure_path(
                    pathlib.PurePosixPath)
            for name in ('WindowsPath', 'PureWindowsPath'):
                checked[f'{module}.{name}'] = _pure_path(
                    pathlib.PureWindowsPath)
        checked.update(_numpy_wrappers())
        classes = {
            'builtins.set': set, 'builtins.frozenset': frozenset,
            'builtins.complex': complex, 'builtins.slice': slice,
            'builtins.range': range,
            'collections.OrderedDict': collections.OrderedDict,
            'collections.Counter': collections.Counter,
            'argparse.Namespace': argparse.Namespace,
            'datetime.datetime': datetime.datetime,
            'datetime.date': datetime.date, 'datetime.time': datetime.time,
            'datetime.timedelta': datetime.timedelta,
            'datetime.timezone': datetime.timezone,
            'mmengine.config.config.ConfigDict': ConfigDict,
        }
        new_only = {
            'mmengine.logging.history_buffer.HistoryBuffer': HistoryBuffer,
        }
        table.update(plain)
        table.update(checked)
        table.update(classes)
        table.update(new_only)
        callable_ += [v for v in checked.values() if callable(v)
                      and not isinstance(v, type)]
        callable_ += list(classes.values())
        self.globals = table
        self.names = {id(v): k for k, v in reversed(list(table.items()))}
        self.callable = {id(f) for f in callable_}
        self.newable |= set(classes.values()) | set(new_only.values())
        self.bases = {object, dict, list, set, frozenset, tuple, int, float,
                      str, bytes}
        self.buildable = {collections.OrderedDict, collections.Counter,
                          argparse.Namespace, HistoryBuffer, ConfigDict,
                          np.ndarray, torch.Tensor, torch.nn.Parameter}
        self.dict_like = {dict, collections.OrderedDict, collections.Counter,
                          collections.defaultdict, ConfigDict}
        # HistoryBuffer's statistics: its own four and registered ones
        self.attributes = {id(HistoryBuffer): lambda: {
            'min', 'max', 'current', 'mean',
            *HistoryBuffer._statistics_methods}}
        self.dtype = np.dtype


@functools.lru_cache(maxsize=1)
def _tables() -> _Tables:
    return _Tables()


def allowed_globals() -> Dict[str, Any]:
    """The globals a checkpoint may name (``'module.name'`` -> object)."""
    return dict(_tables().globals)


# -- the unpickler -----------------------------------------------------------
class Unpickler(pickle._Unpickler):
    """``pickle.Unpickler`` that imports nothing and calls only the
    allowlist (see the module docstring). torch's loaders subclass it and
    route storages through ``persistent_load``."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = f'{module}.{name}'
        found = _tables().globals.get(key, _GlobalRef)
        return _GlobalRef(key) if found is _GlobalRef else found

    @staticmethod
    def _call(func: Any, args: Iterable) -> Any:
        if isinstance(func, _GlobalRef):
            raise RefusedGlobal(func.name, f'call {func.name}')
        if id(func) not in _tables().callable:
            name = _name_of(func)
            raise RefusedGlobal(name, f'call {name}')
        return func(*args)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: list) -> None:
        # INST / OBJ (protocols 0 and 1)
        if isinstance(klass, _GlobalRef) and not args:
            self.append(_placeholder(klass.name))
        else:
            self.append(self._call(klass, args))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_new_object(cls, args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(_new_object(cls, args, kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        tables = _tables()
        if isinstance(inst, UnpickledObject):
            inst.state = state
            return
        if type(inst) not in tables.buildable and \
                not isinstance(inst, tables.dtype):
            name = _name_of(inst)
            raise RefusedGlobal(name, f'set the state of {name}')
        setstate = getattr(type(inst), '__setstate__', None)
        if setstate is not None:
            setstate(inst, state)
            return
        slotstate = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slotstate = state
        if state:
            inst.__dict__.update(state)
        for key, value in (slotstate or {}).items():
            if not isinstance(key, str) or key.startswith('__'):
                raise RefusedGlobal(_name_of(inst), f'set {key!r} on '
                                    f'{_name_of(inst)}')
            setattr(inst, key, value)
    dispatch[pickle.BUILD[0]] = load_build

    def _list_target(self, what: str) -> list:
        target = self.stack[-1]
        if isinstance(target, UnpickledObject):
            return target.listitems
        if type(target) is list:
            return target
        raise RefusedGlobal(_name_of(target), f'{what} {_name_of(target)}')

    def load_append(self) -> None:
        value = self.stack.pop()
        self._list_target('append to').append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._list_target('append to').extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        else:
            self._list_target('add items to').extend(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def _dict_target(self) -> Any:
        target = self.stack[-1]
        if isinstance(target, UnpickledObject) or \
                type(target) in _tables().dict_like:
            return target
        name = _name_of(target)
        raise RefusedGlobal(name, f'set items of {name}')

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._dict_target()[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict_target()
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems


def load(file, *, fix_imports: bool = True, encoding: str = 'ASCII',
         errors: str = 'strict', buffers=None) -> Any:
    """``pickle.load`` through :class:`Unpickler`."""
    return Unpickler(file, fix_imports=fix_imports, encoding=encoding,
                     errors=errors, buffers=buffers).load()


def loads(data: bytes, **kwargs) -> Any:
    """``pickle.loads`` through :class:`Unpickler`."""
    import io
    return load(io.BytesIO(data), **kwargs)
