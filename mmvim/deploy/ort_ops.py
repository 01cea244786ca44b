"""mmvim's onnxruntime custom operator ``mmvim.ai::SelectiveScan``: the
opt-in fast path of ONNX deployment (docs/deploy.md).

* :func:`selective_scan_kernel_onnx` translates the exporter's
  ``mmvim::selective_scan_kernel`` (:mod:`mmvim.ops.scan_export_kernel`,
  ``export_onnx.py --scan-op mmvim``) into one ``SelectiveScan`` node of the
  ``mmvim.ai`` domain (opset 1);
* :func:`library_path` finds the custom-op library that ``make install``
  builds from ``mmvim/csrc`` (``mmvim/libmmvim_ort_ops.so``: the C++ kernels
  and ``mmvim/csrc/ort``; no torch or Python inside), and
  :func:`register_library` registers it with onnxruntime session options,
  or says how to get it.

Outside Python the library registers the same way: onnxruntime's
``RegisterCustomOpsLibrary_V2(options, path)`` (C/C++) or
``SessionOptions.register_custom_ops_library(path)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ['DOMAIN', 'OP_TYPE', 'LIBRARY_NAME', 'LIBRARY_HINT',
           'CustomOpLibraryError', 'library_path', 'register_library',
           'check_library',
           'custom_domains', 'selective_scan_kernel_onnx']

DOMAIN = 'mmvim.ai'
OP_TYPE = 'SelectiveScan'
LIBRARY_NAME = 'libmmvim_ort_ops.so'
LIBRARY_HINT = (
    'build mmvim\'s onnxruntime custom-op library: `make install` (or `pip '
    'install -e .[deploy]`) with a C++ compiler such as g++ installed; it '
    f'is written to mmvim/{LIBRARY_NAME}. Or export the file again without '
    '--scan-op mmvim (standard operators only, runs without the library)')


class CustomOpLibraryError(RuntimeError):
    """A file needs mmvim's custom-op library and it is not there."""


def library_path() -> Optional[str]:
    """The built custom-op library, or None when it was not built."""
    import mmvim
    path = Path(mmvim.__file__).resolve().parent / LIBRARY_NAME
    return str(path) if path.is_file() else None


def register_library(options, what: str = 'this file') -> str:
    """Register the library with onnxruntime ``SessionOptions``; returns
    its path. Raises :class:`CustomOpLibraryError` (what needs it and how to
    build it) when it was not built."""
    path = library_path()
    if path is None:
        raise _not_built(what)
    options.register_custom_ops_library(path)
    return path


def _not_built(what: str) -> CustomOpLibraryError:
    return CustomOpLibraryError(
        f'{what} uses mmvim\'s custom operator {DOMAIN}::{OP_TYPE} '
        f'(exported with --scan-op mmvim), but the library that runs it is '
        f'not built: {LIBRARY_HINT}')


def check_library(model: Union[str, os.PathLike, Any], what: str) -> None:
    """Raise :class:`CustomOpLibraryError` now (not at the first batch) if
    ``model`` (a path or a loaded ``onnx.ModelProto``; ``what`` names it in
    the message) needs the library and it was not built."""
    if DOMAIN in custom_domains(model) and library_path() is None:
        raise _not_built(what)


def custom_domains(model: Union[str, os.PathLike, Any]) -> set:
    """The non-standard operator domains a model (a path or an
    ``onnx.ModelProto``) imports, from its ``opset_import``."""
    import onnx
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    return {o.domain for o in model.opset_import
            if o.domain not in ('', 'ai.onnx')}


def selective_scan_kernel_onnx(u, delta, A, B, C, D=None, z=None,
                               delta_bias=None, softplus: bool = False,
                               reverse=()):
    """The translation of ``mmvim::selective_scan_kernel`` for
    ``torch.onnx.export(..., custom_translation_table=...)``: one
    ``mmvim.ai::SelectiveScan`` node (inputs and attributes as the
    operator's, absent optional inputs left empty)."""
    import onnx_ir as ir
    import onnxscript
    tracer = onnxscript.evaluator.default()
    attrs = {'delta_softplus': int(bool(softplus))}
    if reverse:
        attrs['reverse'] = [int(bool(r)) for r in reverse]
    node = ir.Node(DOMAIN, OP_TYPE,
                   inputs=[u, delta, A, B, C, D, z, delta_bias],
                   attributes=ir.convenience.convert_attributes(attrs),
                   num_outputs=1, version=1)
    tracer.nodes.append(node)
    return node.outputs[0]
