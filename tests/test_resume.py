"""Exact, kill-safe resume: a run killed with SIGKILL (after a checkpoint,
or in the middle of writing one) and resumed with ``tools/train.py
--resume`` ends with the weights of an uninterrupted run, bit for bit; files
that are not complete checkpoints stop the tools with a one-line error."""
import random
import shutil

import numpy as np
import pytest
import torch
from e2e import SEG_CONFIG, SEG_SYNCBN, loader_settings, run, write_config

from mmvim.checkpoint import CheckpointFileError, load_checkpoint_file
from mmvim.checkpoint.io import checkpoint_file_problem
from mmvim.engine.hooks import get_rng_state, set_rng_state
from mmvim.engine.runner import latest_complete_checkpoint

KILLED = -9  # subprocess return code of a process ended by SIGKILL


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(),
            [random.random() for _ in range(3)])


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # a cached gaussian is part of numpy's state
    torch.save(dict(rng_states=[get_rng_state()]), tmp_path / 's.pth')
    expected = _draws()
    state = torch.load(tmp_path / 's.pth', weights_only=True)
    set_rng_state(state['rng_states'][0])
    assert _draws() == expected


def _checkpoint_files(folder):
    torch.save(dict(state_dict={'w': torch.zeros(64, 64)}),
               folder / 'iter_2.pth')
    torch.save(dict(state_dict={'w': torch.ones(64, 64)}),
               folder / 'iter_4.pth')
    data = (folder / 'iter_4.pth').read_bytes()
    (folder / 'iter_6.pth').write_bytes(data[:len(data) // 2])  # cut save
    (folder / 'notes.pth').write_text('not weights\n')
    (folder / 'empty.pth').write_bytes(b'')


def test_unusable_files_are_named_with_what_is_wrong(tmp_path):
    _checkpoint_files(tmp_path)
    assert checkpoint_file_problem(str(tmp_path / 'iter_4.pth')) is None
    for name, what in (('iter_6.pth', 'is truncated'),
                       ('notes.pth', 'is not a PyTorch checkpoint (a text'),
                       ('empty.pth', 'is empty'),
                       ('missing.pth', 'does not exist')):
        path = str(tmp_path / name)
        with pytest.raises(CheckpointFileError) as err:
            load_checkpoint_file(path)
        assert path in str(err.value) and what in str(err.value)
        assert '\n' not in str(err.value)


def test_resume_skips_a_checkpoint_that_is_not_complete(tmp_path):
    """If a kill cut ``last_checkpoint`` or the file it names, --resume
    takes the latest complete iter_N.pth."""
    _checkpoint_files(tmp_path)
    last = tmp_path / 'last_checkpoint'
    for text in (str(tmp_path / 'iter_6.pth'), '', str(tmp_path / 'it')):
        last.write_text(text)
        assert latest_complete_checkpoint(str(tmp_path)) == \
            str(tmp_path / 'iter_4.pth')
    last.unlink()  # killed before mmengine wrote it after the first save
    assert latest_complete_checkpoint(str(tmp_path)) == \
        str(tmp_path / 'iter_4.pth')
    last.write_text(str(tmp_path / 'iter_2.pth'))  # named and complete
    assert latest_complete_checkpoint(str(tmp_path)) == \
        str(tmp_path / 'iter_2.pth')


def _one_line_error(proc, path):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith('error')]
    assert len(errors) == 1 and str(path) in errors[0], proc.stderr[-3000:]
    return errors[0]


def test_tools_stop_on_unusable_checkpoint_files(tmp_path):
    from mmvim.datasets import make_demo_segmentation
    _checkpoint_files(tmp_path)
    cut, text = tmp_path / 'iter_6.pth', tmp_path / 'notes.pth'
    data = make_demo_segmentation(str(tmp_path / 'data'), 2, 2, 64)
    config = write_config(tmp_path / 'seg.py', SEG_CONFIG,
                          loader_settings(data, 2))
    work = ['--work-dir', tmp_path / 'w']
    line = _one_line_error(run('python', 'tools/test.py', config, cut,
                               *work), cut)
    assert 'is truncated' in line
    line = _one_line_error(run('python', 'tools/train.py', config,
                               '--resume', text, *work), text)
    assert 'is not a PyTorch checkpoint' in line
    # load_from is opened by the runner, after it is built
    line = _one_line_error(run('python', 'tools/train.py', config, *work,
                               '--cfg-options', f'load_from={cut}'), cut)
    assert 'is truncated' in line
    # weights without the training state cannot be resumed
    line = _one_line_error(run('python', 'tools/train.py', config,
                               '--resume', tmp_path / 'iter_4.pth', *work),
                           tmp_path / 'iter_4.pth')
    assert 'holds model weights only' in line and 'load_from=' in line


# -- end to end: the segmentation demo (heads on SyncBN, which a single
# process runs as BN), 6 iterations, checkpoints at 3 and 6, validation at 3
# (right after the checkpoint), drop-path on, augmentation and data loading
# in the training process.
MAX_ITERS, MIDPOINT = 6, 3


@pytest.fixture(scope='module')
def seg_run(tmp_path_factory):
    """The test config, a variant with extra hooks, and the final weights
    of an uninterrupted run."""
    from mmvim.datasets import make_demo_segmentation
    tmp = tmp_path_factory.mktemp('resume')
    data = make_demo_segmentation(str(tmp / 'data'), 8, 4, 64)
    body = (loader_settings(data, 2) + SEG_SYNCBN +
            'model = dict(backbone=dict(drop_path_rate=0.1))\n'
            f'train_cfg = dict(max_iters={MAX_ITERS}, '
            f'val_interval={MIDPOINT})\n'
            f'default_hooks = dict(checkpoint=dict(interval={MIDPOINT}, '
            'max_keep_ckpts=1))\n'
            'randomness = dict(seed=0, deterministic=True)\n')
    config = write_config(tmp / 'seg.py', SEG_CONFIG, body)

    def with_hook(hook: str, at: int) -> str:
        """The config plus a hook of tests/e2e.py."""
        return write_config(tmp / f'{hook}.py', SEG_CONFIG, body + (
            f'custom_hooks = [dict(type={hook!r}, at={at})]\n'))

    work = tmp / 'uninterrupted'
    proc = run('python', 'tools/train.py', config, '--work-dir', work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return config, with_hook, _weights(work / f'iter_{MAX_ITERS}.pth')


def _weights(path):
    return torch.load(path, map_location='cpu',
                      weights_only=False)['state_dict']


def _differing(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _resume(config, work):
    proc = run('python', 'tools/train.py', config, '--work-dir', work,
               '--resume')
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_exact(
        seg_run, tmp_path):
    config, with_hook, expected = seg_run
    work = tmp_path / 'work'
    proc = run('python', 'tools/train.py',
               with_hook('KillAfterCheckpoint', MIDPOINT),
               '--work-dir', work)
    assert proc.returncode == KILLED, proc.stderr[-4000:]
    assert (work / 'last_checkpoint').read_text() == \
        str(work / f'iter_{MIDPOINT}.pth')
    assert not (work / f'iter_{MAX_ITERS}.pth').exists()

    # the control: the same checkpoint without its RNG states resumes to
    # other weights (the test can tell), with a warning saying why
    control = tmp_path / 'control'
    control.mkdir()
    ckpt = torch.load(work / f'iter_{MIDPOINT}.pth', weights_only=False)
    del ckpt['rng_states']
    torch.save(ckpt, control / f'iter_{MIDPOINT}.pth')
    (control / 'last_checkpoint').write_text(
        str(control / f'iter_{MIDPOINT}.pth'))
    log = _resume(config, control)
    assert 'holds no RNG states' in log
    assert _differing(_weights(control / f'iter_{MAX_ITERS}.pth'),
                      expected)

    log = _resume(config, work)
    assert f'resumed epoch: 0, iter: {MIDPOINT}' in log
    assert 'RNG states of 1 process(es) restored' in log
    assert _differing(_weights(work / f'iter_{MAX_ITERS}.pth'),
                      expected) == []


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_loses_nothing(seg_run,
                                                          tmp_path):
    """Half of iter_6.pth reaches the disk, then SIGKILL: iter_3.pth (the
    one max_keep_ckpts=1 would replace) is still there and named by
    last_checkpoint, the half file is under a temporary name, and the
    resumed run ends as the uninterrupted one."""
    config, with_hook, expected = seg_run
    work = tmp_path / 'work'
    proc = run('python', 'tools/train.py',
               with_hook('KillDuringSave', MAX_ITERS),
               '--work-dir', work)
    assert proc.returncode == KILLED, proc.stderr[-4000:]
    part = work / f'.iter_{MAX_ITERS}.pth.part'
    assert 'is truncated' in checkpoint_file_problem(str(part))
    assert not (work / f'iter_{MAX_ITERS}.pth').exists()
    assert (work / 'last_checkpoint').read_text() == \
        str(work / f'iter_{MIDPOINT}.pth')
    assert checkpoint_file_problem(str(work / f'iter_{MIDPOINT}.pth')) \
        is None

    shutil.copy(part, tmp_path / 'cut.pth')
    _one_line_error(run('python', 'tools/test.py', config,
                        tmp_path / 'cut.pth'), tmp_path / 'cut.pth')

    _resume(config, work)
    assert not part.exists()
    assert _differing(_weights(work / f'iter_{MAX_ITERS}.pth'),
                      expected) == []
