"""Deployment: ONNX export of mmvim models, and evaluation / inference with
the exported files through mmseg and mmdet (docs/deploy.md).

Importing this package registers :class:`ONNXSegmentor` and
:class:`ONNXDetector`; it does not import onnx, onnxscript or onnxruntime
(the ``deploy`` extra), which are imported when a file is exported or
run. :func:`library_path` is mmvim's onnxruntime custom-op library for
files exported with ``--scan-op mmvim`` (:mod:`mmvim.deploy.ort_ops`).
"""
from .export import (
    ExportError,
    export_onnx,
    graph_module,
    load_model,
    onnx_session,
    verify,
    worst_relative_error,
)
from .onnx_detector import ONNXDetector
from .onnx_segmentor import ONNXSegmentor, onnx_model_config
from .ort_ops import CustomOpLibraryError, library_path

__all__ = ['ExportError', 'export_onnx', 'graph_module', 'load_model',
           'onnx_session', 'verify', 'worst_relative_error', 'ONNXSegmentor',
           'onnx_model_config', 'ONNXDetector', 'CustomOpLibraryError',
           'library_path']
