"""Hooks the end-to-end tests put into a training run (through a test
config's ``custom_imports`` / ``custom_hooks``; the tests add this folder to
PYTHONPATH). They record which process saved checkpoints and kill the
training process with a real SIGKILL at chosen points."""
import os
import signal

from mmengine.dist import get_rank
from mmengine.fileio import LocalBackend
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


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
    """SIGKILL rank 0 at the end of iteration ``at``, after the checkpoint
    hook (priority VERY_LOW) has saved and named that checkpoint."""

    priority = 'LOWEST'

    def __init__(self, at: int):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at and get_rank() == 0:
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
