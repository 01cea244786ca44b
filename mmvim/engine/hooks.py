"""A checkpoint hook whose checkpoints resume exactly and survive a kill.

mmengine's ``CheckpointHook`` stores the model, optimiser, schedulers and
message hub. A resumed run re-seeds every random generator from
``randomness.seed`` and skips the dataloader ahead, so drop-path, dropout,
RPN sampling and (with ``num_workers=0``) augmentation draws differ from an
uninterrupted run. It also removes the oldest checkpoint *before* it writes
the new one, so a kill during that write (``max_keep_ckpts=1``) leaves no
checkpoint at all.

:class:`ResumableCheckpointHook` is that hook plus

* the torch / numpy / python (and CUDA) RNG states of every rank, gathered
  onto rank 0 and stored as ``checkpoint['rng_states']`` (tensors and ints,
  so the entry loads with ``torch.load(weights_only=True)``); on resume each
  rank gets its own state back right before the first new batch is drawn
  (after mmengine's skip-ahead, which itself draws from the generators when
  the data is loaded in the main process);
* validation run under a fork of the generators: a checkpoint taken at a
  validation iteration holds the state the next training step starts from;
* removal of outdated checkpoints only after the new file is complete.

:class:`mmvim.engine.MMVimRunner` writes each file atomically and uses this
hook wherever a config asks for mmengine's ``CheckpointHook`` (every mmvim
config and any user config run by the mmvim tools), so nothing needs to be
enabled. Exactness needs a fixed ``randomness.seed`` (the samplers and the
dataloader workers are seeded from it; mmengine's skip-ahead replays them).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info, is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

RNG_KEY = 'rng_states'


def get_rng_state() -> Dict:
    """This process's torch, numpy, python (and current CUDA device's) RNG
    states, as tensors and plain numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = dict(
        torch=torch.get_rng_state(),
        numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)),
                   pos=int(pos), has_gauss=int(has_gauss),
                   cached_gaussian=float(cached)),
        python=dict(version=int(version),
                    internal=torch.tensor(internal, dtype=torch.int64),
                    gauss_next=gauss_next))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict) -> None:
    """Inverse of :func:`get_rng_state` (tensors may sit on any device)."""
    torch.set_rng_state(state['torch'].cpu())
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['keys'].cpu().numpy().astype(
        np.uint32), npy['pos'], npy['has_gauss'], npy['cached_gaussian']))
    py = state['python']
    random.setstate((py['version'], tuple(py['internal'].tolist()),
                     py['gauss_next']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())


class _DeferredRemoval:
    """The hook's file backend, with ``remove`` / ``rmtree`` postponed."""

    def __init__(self, backend, pending: List):
        self._backend = backend
        self._pending = pending

    def remove(self, path) -> None:
        self._pending.append((self._backend.remove, path))

    def rmtree(self, path) -> None:
        self._pending.append((self._backend.rmtree, path))

    def __getattr__(self, name):
        return getattr(self._backend, name)


class _RestoreAfterSkip:
    """Stands in for an ``IterBasedTrainLoop``'s dataloader iterator while
    mmengine skips the ``skip`` batches trained before the checkpoint; sets
    ``state`` right before the first new batch is drawn and puts the
    loop's own iterator back."""

    def __init__(self, loop: IterBasedTrainLoop, skip: int, state: Dict):
        self._loop = loop
        self._iterator = loop.dataloader_iterator
        self._left = skip
        self._state = state

    def __iter__(self):
        return self

    def __next__(self):
        if self._left > 0:
            self._left -= 1
            return next(self._iterator)
        set_rng_state(self._state)
        self._loop.dataloader_iterator = self._iterator
        return next(self._iterator)


@HOOKS.register_module()
class ResumableCheckpointHook(CheckpointHook):
    """mmengine's :class:`~mmengine.hooks.CheckpointHook` (same arguments),
    whose checkpoints hold every rank's RNG states and resume exactly, and
    which removes outdated checkpoints only once the new one is written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._states: Optional[List[Dict]] = None  # gathered, to be saved
        self._loaded: Optional[List[Dict]] = None  # from the loaded file
        self._before_val: Optional[Dict] = None

    # -- saving ------------------------------------------------------------
    def _gather(self) -> List[Dict]:
        """Every rank's training RNG state (a collective: all ranks call
        it, as they all call the save methods below)."""
        local = self._before_val if self._before_val is not None \
            else get_rng_state()
        return all_gather_object(local)

    @contextmanager
    def _removal_after_save(self):
        pending: List = []
        backend = self.file_backend
        self.file_backend = _DeferredRemoval(backend, pending)
        try:
            yield
        finally:
            self.file_backend = backend
        if is_main_process():
            for remove, path in pending:
                remove(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        self._states = self._gather()
        try:
            with self._removal_after_save():
                super()._save_checkpoint_with_step(runner, step, meta)
        finally:
            self._states = None

    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.save_best:
            return
        self._states = self._gather()
        try:
            with self._removal_after_save():
                super()._save_best_checkpoint(runner, metrics)
        finally:
            self._states = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._states is not None:
            checkpoint[RNG_KEY] = self._states

    # -- validation inside training leaves the generators as it found them
    def before_val(self, runner) -> None:
        self._before_val = get_rng_state()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            set_rng_state(self._before_val)
            self._before_val = None

    # -- resuming ----------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get(RNG_KEY)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        states, self._loaded = self._loaded, None
        if runner.iter == 0:  # a fresh run (load_from loads weights only)
            return
        rank, world_size = get_dist_info()
        if states is None:
            runner.logger.warning(
                'The resumed checkpoint holds no RNG states (written by '
                'another checkpoint hook or an older mmvim): random draws '
                'after the resume differ from an uninterrupted run.')
            return
        if len(states) != world_size:
            runner.logger.warning(
                f'The resumed checkpoint holds the RNG states of '
                f'{len(states)} processes, this run has {world_size}: the '
                'generators keep their seeded states.')
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            # mmengine skips `iter` batches before the first new one
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop, loop.iter, states[rank])
        else:
            set_rng_state(states[rank])
        runner.logger.info(
            f'RNG states of {world_size} process(es) restored as saved at '
            f'iteration {runner.iter}.')
