"""Export mmvim models to ONNX and run the files in onnxruntime.

The I/O contract of an exported segmentor (any mmseg ``EncoderDecoder``
config, e.g. every UperNet config of mmvim):

* input ``inputs``: float32 (N, 3, H, W), the batch as the data
  preprocessor leaves it (mean/std normalised, RGB order as the config
  says, padded to the batch size);
* output ``seg_logits``: float32 (N, num_classes, H, W), the tensor that
  ``EncoderDecoder.encode_decode(inputs, batch_img_metas)`` returns, i.e.
  the decode head's logits resized to the input size (before the
  un-padding and resize to the original image that ``predict`` does);
* with ``argmax`` also ``seg_labels``: int64 (N, H, W), the argmax over
  classes.

A two-stage detector (an mmdet config: Mask R-CNN, Cascade Mask R-CNN)
exports whole, post-processing included (:mod:`mmvim.deploy.det_graph`):
inputs ``inputs`` as above and ``img_shape`` int64 (N, 2); outputs
``dets`` (N, K, 5), ``labels`` (N, K) and ``masks`` (N, K, M, M).

The selective scan becomes a ``Loop`` over chunks of standard operators
(:mod:`mmvim.ops.scan_export`, :mod:`mmvim.deploy.onnx_scan`): the files
hold no custom-domain operator, and their size does not depend on H x W.
With ``scan_op='mmvim'`` it becomes mmvim's compiled kernel as the
onnxruntime custom operator ``mmvim.ai::SelectiveScan`` instead
(:mod:`mmvim.ops.scan_export_kernel`, :mod:`mmvim.deploy.ort_ops`).
onnx, onnxscript and onnxruntime are needed here only (the ``deploy``
extra); ``import mmvim`` does not import them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['SegmentorGraph', 'load_model', 'graph_module',
           'export_onnx', 'onnx_session', 'session_options', 'run_onnx',
           'worst_relative_error',
           'count_nodes', 'require_deploy', 'DEPLOY_HINT', 'INPUT_NAME',
           'ExportError', 'verify']

INPUT_NAME = 'inputs'
# smallest height / width of a dynamic export (every backbone keeps at least
# one token per stage from 64 pixels on)
MIN_DYNAMIC_SIZE = 64
DEPLOY_HINT = ('install the deploy extra: pip install -e .[deploy] (onnx, '
               'onnxscript, onnxruntime; `make install` installs it)')


class ExportError(RuntimeError):
    """The model could not be exported; the message says why."""


def require_deploy() -> None:
    """Raise ImportError with the install hint if a deploy package is
    missing."""
    missing = []
    for name in ('onnx', 'onnxscript', 'onnxruntime'):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f'{", ".join(missing)} not installed: '
                          f'{DEPLOY_HINT}')


class SegmentorGraph(nn.Module):
    """What is exported of a segmentor: (N, 3, H, W) -> seg logits (N, C,
    H, W) = ``segmentor.encode_decode`` with image and pad shape = (H, W)
    (module docstring); with ``argmax`` also the labels (N, H, W)."""

    def __init__(self, segmentor: nn.Module, argmax: bool = False) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.argmax = argmax

    def forward(self, inputs: Tensor):
        size = tuple(inputs.shape[2:])
        # encode_decode reads only the first image's shapes
        logits = self.segmentor.encode_decode(
            inputs, [dict(img_shape=size, pad_shape=size, ori_shape=size)])
        if self.argmax:
            return logits, logits.argmax(1)
        return logits

    def output_names(self) -> List[str]:
        return ['seg_logits', 'seg_labels'] if self.argmax else \
            ['seg_logits']

    @staticmethod
    def input_names() -> List[str]:
        return [INPUT_NAME]

    @staticmethod
    def example_inputs(inputs: Tensor) -> Tuple[Tensor]:
        return (inputs, )


def load_model(config: str, checkpoint: Optional[str] = None,
               seed: int = 0, cfg_options: Optional[dict] = None):
    """(cfg, model in eval mode): the config's model with the checkpoint's
    weights (converted and checked strictly, as tools/test.py loads them),
    or without a checkpoint the config's initialisation under ``seed``
    (pretrained backbone files are not read)."""
    from mmengine.logging import MMLogger

    from ..checkpoint.dense import load_model_checkpoint
    from ..utils import build_model, load_config
    cfg = load_config(config, cfg_options)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter
    try:
        if checkpoint is None:
            model.init_weights()
        else:
            load_model_checkpoint(model, checkpoint, strict=True)
    finally:
        logger.setLevel(level)
    model.eval()
    return cfg, model


def graph_module(cfg, model: nn.Module, argmax: bool = False) -> nn.Module:
    """The module exported for ``cfg``: :class:`SegmentorGraph` for mmseg
    configs, :class:`~mmvim.deploy.det_graph.DetectorGraph` for mmdet ones
    (ValueError, one line, for a model neither exports)."""
    if cfg.get('default_scope') == 'mmdet':
        from .det_graph import DetectorGraph
        return DetectorGraph(model).eval()
    if not hasattr(model, 'encode_decode'):
        raise ValueError(f'{type(model).__name__} has no encode_decode: '
                         'only mmseg EncoderDecoder segmentors export whole')
    return SegmentorGraph(model, argmax).eval()


def count_nodes(graph) -> int:
    """Nodes of an ``onnx.GraphProto``, those inside Loop/If bodies
    included."""
    import onnx
    n = 0
    for node in graph.node:
        n += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                n += count_nodes(attr.g)
            for g in attr.graphs:
                n += count_nodes(g)
    return n


def _domains(graph, found: set) -> set:
    import onnx
    for node in graph.node:
        found.add(node.domain or 'ai.onnx')
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _domains(attr.g, found)
    return found


def export_onnx(module: nn.Module, example: Union[Tensor, Tuple[Tensor,
                                                                  ...]],
                path: str, dynamic: bool = False,
                opset: Optional[int] = None,
                output_names: Optional[Sequence[str]] = None,
                input_names: Optional[Sequence[str]] = None,
                scan_op: str = 'loop') -> Dict[str, object]:
    """Export ``module(example)`` to ``path``; returns facts about the file
    (seconds, nodes with and without the Loop bodies, bytes, opset, the
    custom domains it uses).

    ``example`` is the image batch (N, 3, H, W), or a tuple of inputs whose
    first is that batch and the others have the batch as their first
    dimension (a detector's image sizes), named ``input_names`` (the
    module's forward arguments; default ``inputs``). ``dynamic``: batch,
    height and width are dynamic dimensions (the export fails if the model
    specialises any of them). ``scan_op``: 'loop' (default) writes every
    scan as standard ONNX operators, and the file is checked to hold only
    those and no functions; 'mmvim' writes each scan as one
    ``mmvim.ai::SelectiveScan`` node, mmvim's compiled kernel, which needs
    mmvim's onnxruntime custom-op library to run
    (:mod:`mmvim.deploy.ort_ops`).
    """
    require_deploy()
    import onnx

    from ..ops.scan_export_kernel import export_scan_op
    from .onnx_ops import translation_table
    from .ort_ops import DOMAIN
    examples = tuple(example) if isinstance(example, (tuple, list)) else \
        (example, )
    names = list(input_names or [INPUT_NAME])
    dynamic_shapes = None
    if dynamic:
        from torch.export import Dim
        batch = Dim('batch', min=1, max=1024)
        dynamic_shapes = {names[0]: {
            0: batch,
            2: Dim('height', min=MIN_DYNAMIC_SIZE, max=8192),
            3: Dim('width', min=MIN_DYNAMIC_SIZE, max=8192)}}
        dynamic_shapes.update({name: {0: batch} for name in names[1:]})
        if examples[0].shape[0] == 1:  # torch.export fixes sizes of 1
            examples = tuple(x.expand(2, *x.shape[1:]) for x in examples)
    if dynamic and _grid_dependent_routes(module):
        raise ExportError(
            'this model scans with a route other than the default, whose '
            'order is computed for each grid size: export it for a fixed '
            'input size (without --dynamic)')
    if len(examples) == 1:
        module = _InputNamed(module)
    start = time.perf_counter()
    with torch.no_grad():
        # one eager pass at the example size: route orders and other
        # per-size constants are computed (and cached) outside the trace
        module(*examples)
    with torch.no_grad(), _quiet_exporter(), export_scan_op(scan_op):
        # torch.export first, by itself: torch.onnx.export would fall back
        # to other capture strategies when it fails (e.g. a dimension the
        # model specialises), which can silently give a static graph
        try:
            # deferred runtime asserts: shape facts torch cannot prove
            # symbolically (e.g. that ceil(H / ws) * ws divides by ws in
            # MambaVision's window padding) are not errors; and sizes are
            # not specialised to 1 where the example has a single window or
            # token per side. The dynamic export is verified at several
            # sizes instead (tools/deploy/export_onnx.py --verify, tests).
            with _size_oblivious(dynamic):
                program = torch.export.export(
                    module, examples, dynamic_shapes=dynamic_shapes,
                    strict=False,
                    prefer_deferred_runtime_asserts_over_guards=dynamic)
        except Exception as err:  # torch's UserError and friends
            raise ExportError(
                f'torch.export could not capture the model: '
                f'{str(err).strip().splitlines()[0]}') from err
        program = torch.onnx.export(
            program, examples, dynamo=True,
            custom_translation_table=translation_table(),
            opset_version=opset, input_names=names,
            output_names=list(output_names or []), optimize=True,
            verbose=False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    program.save(path)
    seconds = time.perf_counter() - start
    proto = onnx.load(path)
    domains = _domains(proto.graph, set()) - {'ai.onnx'}
    allowed = {DOMAIN} if scan_op == 'mmvim' else set()
    if domains - allowed or len(proto.functions):
        raise RuntimeError(
            f'{path} holds non-standard operators (domains {sorted(domains)}'
            f', {len(proto.functions)} functions); this is a bug in mmvim\'s '
            'export, please report it')
    opsets = {o.domain or 'ai.onnx': o.version for o in proto.opset_import}
    if domains - set(opsets):  # the custom domain's opset, if not declared
        proto.opset_import.extend(onnx.helper.make_opsetid(d, 1)
                                  for d in sorted(domains - set(opsets)))
        onnx.save(proto, path)
    return dict(seconds=seconds, nodes=count_nodes(proto.graph),
                top_level_nodes=len(proto.graph.node),
                bytes=os.path.getsize(path), opset=opsets.get('ai.onnx'),
                custom_domains=sorted(domains))


def _grid_dependent_routes(module: nn.Module) -> bool:
    """Whether a backbone of ``module`` scans with non-default routes (their
    orders are computed per grid size in Python)."""
    from ..models.backbones.mambavision import MambaVisionLevel
    from ..models.backbones.vim import Vim
    from ..models.layers import SS2D
    for m in module.modules():
        if (isinstance(m, Vim) and not m.raster) or \
                (isinstance(m, SS2D) and not m.cross) or \
                (isinstance(m, MambaVisionLevel) and
                 m.scan_route is not None):
            return True
    return False


def _size_oblivious(on: bool):
    """torch's size-oblivious reasoning for backed sizes (no 0/1
    specialisation), where this torch has the switch."""
    try:
        from torch.fx.experimental import _config
        return _config.patch(backed_size_oblivious=True) if on else \
            contextlib.nullcontext()
    except (ImportError, AttributeError, KeyError):
        return contextlib.nullcontext()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's own notes (torchvision missing, deprecations inside
    torch) are not the user's business; errors still raise."""
    logger = logging.getLogger('torch.onnx')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)
            warnings.filterwarnings('ignore', message='.*torchvision.*')
            yield
    finally:
        logger.setLevel(level)


class _InputNamed(nn.Module):
    """``module`` with its forward argument called ``inputs`` (the name the
    dynamic shapes refer to)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, inputs: Tensor):
        return self.module(inputs)


def session_options(threads: Optional[int] = None, level=None,
                    spinning: bool = False):
    """onnxruntime ``SessionOptions`` as :func:`onnx_session` makes them.

    Args:
        threads: intra-op threads (default: onnxruntime's, one per physical
            core).
        level: graph optimisation level, an ``ort.GraphOptimizationLevel``
            (default: onnxruntime's, all optimisations, which was the
            fastest level for every model, docs/deploy.md).
        spinning: whether idle intra-op threads spin waiting for work
            (onnxruntime's default). Off here: with other processes on the
            cores a spinning thread takes a core from the one doing the
            work (UperNet + Vim-Ti was 25-35% faster without spinning on
            the shared 2-core machine, docs/deploy.md).
    """
    require_deploy()
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if level is not None:
        options.graph_optimization_level = level
    options.add_session_config_entry('session.intra_op.allow_spinning',
                                     '1' if spinning else '0')
    options.log_severity_level = 3
    return options


def onnx_session(path: str, threads: Optional[int] = None):
    """An onnxruntime CPU session for ``path`` with
    :func:`session_options` (``threads`` intra-op threads). A file exported
    with ``--scan-op mmvim`` gets mmvim's custom-op library registered;
    without the library it raises
    :class:`~mmvim.deploy.ort_ops.CustomOpLibraryError` saying how to build
    it."""
    require_deploy()
    import onnxruntime as ort

    from .ort_ops import DOMAIN, custom_domains, register_library
    options = session_options(threads)
    if DOMAIN in custom_domains(path):
        register_library(options, os.path.basename(path))
    return ort.InferenceSession(path, options,
                                providers=['CPUExecutionProvider'])


def run_onnx(session, inputs: Tensor) -> List[np.ndarray]:
    """All outputs of ``session`` for one (N, 3, H, W) batch."""
    return session.run(None, {session.get_inputs()[0].name:
                              inputs.detach().cpu().float().numpy()})


def worst_relative_error(out, ref) -> float:
    """``max abs(out - ref) / max abs(ref)`` (the error relative to the tensor's
    scale; 0 when both are zero)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max()
    diff = np.abs(out - ref).max()
    return float(diff / scale) if scale > 0 else float(diff)


def verify(module: nn.Module, session, inputs: Tensor) -> float:
    """Worst relative error of the file's outputs against ``module`` in
    PyTorch (float32, the default scan backend) on ``inputs``, over all
    float outputs."""
    with torch.no_grad():
        ref = module(inputs)
    refs = ref if isinstance(ref, (tuple, list)) else (ref, )
    outs = run_onnx(session, inputs)
    errors = [worst_relative_error(o, r.numpy()) for o, r in zip(outs, refs)
              if r.is_floating_point()]
    return max(errors)
