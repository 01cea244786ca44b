"""The mmengine Runner, loading whole-model checkpoints through mmvim,
writing them atomically, and running distributed on CPU machines too.

Checkpoint loading: mmengine's ``Runner.load_checkpoint`` (used for
``load_from``, ``--resume`` and ``tools/test.py``) loads with
``strict=False``: keys that do not fit are skipped with a log line and the
test runs on partly random weights. The official dense releases also name
their backbone differently from how a fresh mmvim model would if its layout
ever changed. :class:`MMVimRunner` loads through
:func:`mmvim.checkpoint.dense.load_model_checkpoint` instead: the
``backbone.`` part is converted by the backbone's family converter, the
heads load unchanged, and with ``strict_load`` (``tools/test.py``) every key
must fit or the run stops naming the keys. A file that is not a complete
checkpoint raises :class:`~mmvim.checkpoint.CheckpointFileError` (one line).
The runner also logs mmvim's environment report (:mod:`mmvim.env`) after
mmengine's environment block.

Kill-safe checkpoints: every checkpoint file is written under a temporary
name in its directory and renamed into place once complete, so a file named
``iter_N.pth`` is always whole and ``last_checkpoint`` (written by
mmengine's hook after the save returns) only ever names a complete file. A
config's ``CheckpointHook`` runs as
:class:`~mmvim.engine.hooks.ResumableCheckpointHook`: it stores every
rank's RNG states for an exact resume and removes outdated checkpoints only
after the new one is written.

Distributed on CPU: ``--launcher pytorch`` (``tools/dist_train.sh``) uses
PyTorch's own engine (torchrun, ``torch.distributed``, mmengine's DDP
wrapper). Without a CUDA device the process group uses gloo and no device
is bound (mmengine's launcher would call ``torch.cuda.set_device``), DDP
wraps the CPU model without ``device_ids``, and SyncBN layers (torch's
SyncBatchNorm needs a GPU) become BN with one log line. With CUDA nothing
changes: nccl, one GPU per process, SyncBN.
"""
from __future__ import annotations

import datetime
import os
import os.path as osp
import re
from typing import Dict, Optional

import torch
from mmengine.device import get_device
from mmengine.dist import is_distributed, master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import find_latest_checkpoint
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.common import CheckpointFileError
from ..checkpoint.dense import load_model_checkpoint
from ..checkpoint.io import checkpoint_file_problem
from .hooks import ResumableCheckpointHook

_STEP_FILE = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')
_PLAIN_CHECKPOINT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook',
                           CheckpointHook)


def latest_complete_checkpoint(work_dir: str, logger=None) -> Optional[str]:
    """The checkpoint ``work_dir/last_checkpoint`` names if it is complete;
    otherwise (a kill cut that few-byte file or the checkpoint) the
    ``iter_N.pth`` / ``epoch_N.pth`` with the largest N that is complete,
    in the directory of the named file or else ``work_dir``."""
    named = find_latest_checkpoint(work_dir)
    if named and checkpoint_file_problem(named) is None:
        return named
    folder = osp.dirname(named) if named and osp.isdir(
        osp.dirname(named)) else work_dir
    steps = sorted(((int(m.group(1)), f) for f in os.listdir(folder)
                    if (m := _STEP_FILE.match(f))), reverse=True)
    for _, name in steps:
        path = osp.join(folder, name)
        if checkpoint_file_problem(path) is None:
            if logger is not None:
                why = (f'last_checkpoint names {named!r}, which '
                       f'{checkpoint_file_problem(named)}' if named else
                       'last_checkpoint is missing or empty')
                logger.warning(f'{why}; resuming from {path}, the latest '
                               'complete checkpoint.')
            return path
    return named


def _atomic_rename(tmp: str, path: str) -> None:
    """fsync ``tmp``, rename it to ``path`` and fsync the directory."""
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(osp.dirname(path) or '.', os.O_RDONLY)
    except OSError:  # e.g. a file system that cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@RUNNERS.register_module()
class MMVimRunner(Runner):
    """:class:`mmengine.runner.Runner` whose checkpoint loading converts
    official dense releases and can be strict (``strict_load``), whose
    checkpoints are written atomically and resume exactly, and whose
    ``--launcher pytorch`` also runs on CPU-only machines (gloo)."""

    #: strict loading for ``load_from``/resume (tools/test.py sets it); when
    #: False, keys that fit are loaded and the others are logged as warnings
    strict_load: bool = False
    _resuming: Optional[str] = None

    # -- distributed -------------------------------------------------------
    @property
    def cpu_distributed(self) -> bool:
        """A multi-process run on a machine without an accelerator."""
        return self.distributed and get_device() == 'cpu'

    def setup_env(self, env_cfg: Dict) -> None:
        if self.cpu_distributed and not is_distributed():
            self._init_cpu_process_group(env_cfg.get('dist_cfg', {}))
        super().setup_env(env_cfg)

    def _init_cpu_process_group(self, dist_cfg: Dict) -> None:
        """What mmengine's ``init_dist`` does for torchrun, without binding
        a CUDA device; nccl (the configs' default) becomes gloo."""
        if self.launcher != 'pytorch':
            raise RuntimeError(
                f'--launcher {self.launcher} on a machine without CUDA: '
                'mmvim runs CPU multi-process jobs through torchrun '
                '(--launcher pytorch, tools/dist_train.sh).')
        kwargs = dict(dist_cfg)
        kwargs.pop('init_backend', None)
        backend = kwargs.pop('backend', 'gloo')
        if backend == 'nccl':
            backend = 'gloo'
        if kwargs.get('timeout') is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
        torch.distributed.init_process_group(backend=backend, **kwargs)

    def wrap_model(self, model_wrapper_cfg: Optional[Dict], model):
        if not self.cpu_distributed or is_model_wrapper(model):
            return super().wrap_model(model_wrapper_cfg, model)
        syncbn = sum('SyncBatchNorm' in type(m).__name__
                     for m in model.modules())
        sync_bn = self.cfg.pop('sync_bn', None)  # would convert BN to SyncBN
        if syncbn or sync_bn:
            what = f'{syncbn} SyncBN layers run as BN' if syncbn else \
                f'sync_bn={sync_bn!r} is not applied'
            self.logger.info(
                f'CPU distributed run ({torch.distributed.get_backend()}, '
                f'{self.world_size} processes): {what} (torch SyncBatchNorm '
                'needs a GPU); batch statistics are per process, weights '
                'and keys are unchanged.')
            model = revert_sync_batchnorm(model)
        if model_wrapper_cfg is None:
            model_wrapper_cfg = dict(
                type='MMDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=self.cfg.get(
                    'find_unused_parameters', False))
        model_wrapper_cfg = dict(model_wrapper_cfg)
        wrapper = model_wrapper_cfg.setdefault('type',
                                               'MMDistributedDataParallel')
        if isinstance(wrapper, str):
            wrapper = MODEL_WRAPPERS.get(wrapper)
        if isinstance(wrapper, type) and issubclass(wrapper,
                                                    DistributedDataParallel):
            model_wrapper_cfg['device_ids'] = None  # a CPU module
        try:
            return super().wrap_model(model_wrapper_cfg, model)
        finally:
            if sync_bn is not None:
                self.cfg.sync_bn = sync_bn

    # -- hooks -------------------------------------------------------------
    def register_default_hooks(self, hooks=None) -> None:
        hooks = dict(hooks or {})
        ckpt = hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))
        if isinstance(ckpt, dict) and ckpt.get('type') in \
                _PLAIN_CHECKPOINT_HOOKS:
            hooks['checkpoint'] = dict(ckpt, type=ResumableCheckpointHook)
        super().register_default_hooks(hooks)

    # -- saving --------------------------------------------------------------
    @master_only
    def save_checkpoint(self, out_dir: str, filename: str,
                        file_client_args: Optional[dict] = None,
                        save_optimizer: bool = True,
                        save_param_scheduler: bool = True,
                        meta: Optional[dict] = None, by_epoch: bool = True,
                        backend_args: Optional[dict] = None) -> None:
        """mmengine's ``save_checkpoint``, into ``.<filename>.part`` first
        and renamed to ``filename`` once complete (local directories; other
        storage backends are written as mmengine does)."""
        args = (file_client_args, save_optimizer, save_param_scheduler, meta,
                by_epoch, backend_args)
        if file_client_args is not None or not isinstance(
                get_file_backend(out_dir, backend_args=backend_args),
                LocalBackend):
            return super().save_checkpoint(out_dir, filename, *args)
        part = f'.{filename}.part'
        super().save_checkpoint(out_dir, part, *args)
        _atomic_rename(osp.join(out_dir, part), osp.join(out_dir, filename))

    # -- loading -------------------------------------------------------------
    def load_or_resume(self) -> None:
        if not self._has_loaded and self._resume and self._load_from is None:
            # mmengine reads last_checkpoint as it is; skip a cut file
            found = latest_complete_checkpoint(self.work_dir, self.logger)
            if found:
                self._load_from = found
                self.logger.info(f'Auto resumed from {found}.')
        super().load_or_resume()

    def resume(self, filename: str, *args, **kwargs) -> None:
        self._resuming = filename
        try:
            super().resume(filename, *args, **kwargs)
        finally:
            self._resuming = None

    def _log_env(self, env_cfg: dict) -> None:
        """mmengine's environment block, then mmvim's (``python -m
        mmvim.env``: versions, devices, usable kernel backends)."""
        super()._log_env(env_cfg)
        from ..env import env_report
        self.logger.info(env_report())

    def load_checkpoint(self, filename: str, map_location='cpu',
                        strict: bool = False, revise_keys=None):
        from mmengine.runner.checkpoint import _load_checkpoint
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        if self._resuming is not None:
            meta = checkpoint.get('meta') if isinstance(checkpoint, dict) \
                else None
            if not isinstance(meta, dict) or 'iter' not in meta or \
                    'message_hub' not in checkpoint:
                raise CheckpointFileError(
                    f'--resume {filename}: the file holds model weights '
                    'only, not the training state (iteration, optimizer) '
                    'of a tools/train.py checkpoint; start from its weights '
                    f'with --cfg-options load_from={filename} instead.')
        # hooks may rewrite the checkpoint before it is loaded (e.g. EMA)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        if not hasattr(model, 'backbone') and hasattr(model, 'module'):
            model = model.module  # a test-time-augmentation wrapper
        load_model_checkpoint(model, filename,
                              strict=strict or self.strict_load,
                              checkpoint=checkpoint, logger=self.logger)
        self._has_loaded = True
        return checkpoint
