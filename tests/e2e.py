"""What the end-to-end training tests share: a test config written next
to the run, the tools run as a user runs them, and hooks that the training
processes import (``custom_imports=['e2e']``; the runs get this folder on
PYTHONPATH) to record which process saved checkpoints and to kill the
training process with a real SIGKILL at chosen points."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mmengine.dist import get_rank
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

ROOT = Path(__file__).resolve().parents[1]
SEG_CONFIG = ROOT / 'configs/demo_upernet_vim_shapes.py'
DET_CONFIG = ROOT / 'configs/demo_mask_rcnn_vmamba_shapes.py'


# the segmentation demo's neck and heads on SyncBN, as in the real configs
SEG_SYNCBN = ("norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
              'model = dict(neck=dict(norm_cfg=norm_cfg), '
              'decode_head=dict(norm_cfg=norm_cfg), '
              'auxiliary_head=dict(norm_cfg=norm_cfg))\n')


def write_config(path: Path, base: Path, body: str) -> str:
    """A config at ``path`` inheriting ``base`` that imports this module
    (for the hooks below) and adds ``body``."""
    path.write_text(
        f'_base_ = [{str(base)!r}]\n'
        "custom_imports = dict(imports=['mmvim', 'e2e'], "
        'allow_failed_imports=False)\n' + body)
    return str(path)


def loader_settings(data_root: str, batch_size: int, **dataset) -> str:
    """train/val/test dataloaders on ``data_root``, in the main process
    (no workers: short runs), as config text."""
    extra = ''.join(f', {k}={v!r}' for k, v in dataset.items())
    return ''.join(
        f'{split}_dataloader = dict(batch_size={batch_size}, '
        'num_workers=0, persistent_workers=False, '
        f'dataset=dict(data_root={data_root!r}{extra}))\n'
        for split in ('train', 'val', 'test'))


def tool_env(**extra) -> dict:
    """The environment of a tool run: this checkout and this folder first
    on PYTHONPATH, a free port for torchrun, our interpreter."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    path = os.pathsep.join([str(ROOT), str(ROOT / 'tests'),
                            os.environ.get('PYTHONPATH', '')])
    return dict(os.environ, PYTHONPATH=path, PYTHON=sys.executable,
                PORT=str(port), PYTHONWARNINGS='ignore', **extra)


def run(*cmd, timeout=600) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root ('python' means this
    interpreter)."""
    cmd = [sys.executable if c == 'python' else str(c) for c in cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=tool_env())


def _sigkill():
    os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class RecordSaves(Hook):
    """Appends '<iteration>' to ``work_dir/saves_rank<R>.txt`` each time a
    checkpoint is written by process R (``before_save_checkpoint`` runs
    inside ``Runner.save_checkpoint``)."""

    def before_save_checkpoint(self, runner, checkpoint):
        path = os.path.join(runner.work_dir, f'saves_rank{get_rank()}.txt')
        with open(path, 'a') as f:
            f.write(f'{checkpoint["meta"]["iter"]}\n')


@HOOKS.register_module()
class KillAfterCheckpoint(Hook):
    """SIGKILL rank 0 at the end of iteration (or, ``by_epoch``, epoch)
    ``at``, after the checkpoint hook (priority VERY_LOW) has saved and
    named that checkpoint."""

    priority = 'LOWEST'

    def __init__(self, at: int, by_epoch: bool = False):
        self.at = at
        self.by_epoch = by_epoch

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if not self.by_epoch and runner.iter + 1 == self.at and \
                get_rank() == 0:
            _sigkill()

    def after_train_epoch(self, runner):
        if self.by_epoch and runner.epoch + 1 == self.at and \
                get_rank() == 0:
            _sigkill()


@HOOKS.register_module()
class KillDuringSave(Hook):
    """SIGKILL rank 0 in the middle of writing the checkpoint of iteration
    ``at``: half of the file's bytes reach the disk, then the process
    dies."""

    def __init__(self, at: int):
        self.at = at

    def before_save_checkpoint(self, runner, checkpoint):
        if checkpoint['meta']['iter'] != self.at:
            return

        def put_half_then_die(backend, obj, filepath):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
                os.fsync(f.fileno())
            _sigkill()

        LocalBackend.put = put_half_then_die
