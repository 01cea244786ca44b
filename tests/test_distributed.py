"""Multi-process training and testing on PyTorch's own engine (torchrun,
torch.distributed, mmengine's DDP wrapper) as tools/dist_train.sh and
tools/dist_test.sh run it: gloo on a CPU machine, nccl on GPUs."""
import math
import os
import pickle
import re
import subprocess

import pytest
import torch
from e2e import (
    DET_CONFIG,
    ROOT,
    SEG_CONFIG,
    SEG_SYNCBN,
    loader_settings,
    run,
    write_config,
)

PROCS = 2


def _check_training(proc, work, steps):
    """Both ranks ran (world size 2 in rank 0's log; both RNG states in the
    checkpoint), rank 0 alone wrote the checkpoints, the losses are
    finite."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = '\n'.join(p.read_text() for p in work.rglob('*.log'))
    assert f'GPU number: {PROCS}' in log  # mmengine's world size line
    losses = [float(x) for x in re.findall(r'Iter\(train\).*? loss: (\S+)',
                                           log)]
    assert losses and all(math.isfinite(x) for x in losses), losses
    assert (work / 'saves_rank0.txt').read_text().split() == \
        [str(s) for s in steps]
    assert not (work / 'saves_rank1.txt').exists()
    ckpt = torch.load(work / f'iter_{steps[-1]}.pth', weights_only=False)
    assert len(ckpt['rng_states']) == PROCS
    return log


def _compare_tests(config, ckpt, tmp_path):
    """tools/dist_test.sh with PROCS processes and tools/test.py print the
    same metrics and dump the same per-image results (each image once, in
    the dataset's order: gathered across ranks, padding dropped)."""
    out = {}
    for name, cmd in (
            ('dist', ['bash', 'tools/dist_test.sh', config, ckpt, PROCS]),
            ('single', ['python', 'tools/test.py', config, ckpt])):
        dump = tmp_path / f'{name}.pkl'
        proc = run(*cmd, '--work-dir', tmp_path / f'test_{name}',
                   '--cfg-options', f'test_evaluator.1.out_file_path={dump}')
        assert proc.returncode == 0, proc.stderr[-4000:]
        lines = [ln for ln in proc.stdout.splitlines()
                 if ln.startswith('Test metrics')]
        assert len(lines) == 1, proc.stdout[-2000:]  # rank 0 reports
        with open(dump, 'rb') as f:
            out[name] = (lines[0], pickle.load(f))
    assert out['dist'][0] == out['single'][0]
    return out['dist'][1], out['single'][1]


def _test_evaluator(metric: str) -> str:
    return (f'test_evaluator = [{metric}, dict(type="DumpResults", '
            'out_file_path="unset.pkl")]\n')


@pytest.mark.slow
def test_two_process_segmentation_train_and_test(tmp_path):
    """The segmentation demo, its heads on SyncBN as in the real configs,
    trained by 2 processes; 5 validation images (an odd number: the
    sampler pads rank 1's share)."""
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), num_train=8,
                                  num_val=5, size=64)
    config = write_config(tmp_path / 'seg.py', SEG_CONFIG, (
        loader_settings(data, 2) + SEG_SYNCBN +
        'train_cfg = dict(max_iters=4, val_interval=4)\n'
        'default_hooks = dict(checkpoint=dict(interval=2), '
        'logger=dict(interval=1))\n'
        "custom_hooks = [dict(type='RecordSaves')]\n" +
        _test_evaluator("dict(type='IoUMetric', iou_metrics=['mIoU'])")))
    work = tmp_path / 'work'
    proc = run('bash', 'tools/dist_train.sh', config, PROCS, '--work-dir',
               work)
    log = _check_training(proc, work, [2, 4])
    syncbn = [ln for ln in log.splitlines() if 'SyncBN layers run as BN' in ln]
    assert len(syncbn) == 1 and f'gloo, {PROCS} processes' in syncbn[0]

    dist, single = _compare_tests(config, str(work / 'iter_4.pth'), tmp_path)
    assert len(dist) == len(single) == 5
    for a, b in zip(dist, single):
        assert a['img_path'] == b['img_path']
        assert torch.equal(a['pred_sem_seg']['data'],
                           b['pred_sem_seg']['data'])


@pytest.mark.slow
def test_two_process_detection_train_and_test(tmp_path):
    """The Mask R-CNN demo trained by 2 processes; bbox/segm AP and every
    image's detections from dist_test.sh equal tools/test.py's."""
    from mmvim.datasets import make_demo_detection
    data = make_demo_detection(str(tmp_path / 'coco'), 8, 5, 64) + '/'
    ann = data + 'annotations/instances_val2017.json'
    config = write_config(tmp_path / 'det.py', DET_CONFIG, (
        loader_settings(data, 2) +
        'train_cfg = dict(max_iters=2, val_interval=2)\n'
        'default_hooks = dict(checkpoint=dict(interval=2), '
        'logger=dict(interval=1))\n'
        f'val_evaluator = dict(ann_file={ann!r})\n'
        "custom_hooks = [dict(type='RecordSaves')]\n" +
        _test_evaluator(f"dict(type='CocoMetric', ann_file={ann!r}, "
                        "metric=['bbox', 'segm'])")))
    work = tmp_path / 'work'
    proc = run('bash', 'tools/dist_train.sh', config, PROCS, '--work-dir',
               work)
    _check_training(proc, work, [2])

    dist, single = _compare_tests(config, str(work / 'iter_2.pth'), tmp_path)
    assert len(dist) == len(single) == 5
    assert sum(len(a['pred_instances']['scores']) for a in dist) > 0
    for a, b in zip(dist, single):
        assert a['img_id'] == b['img_id']
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(a['pred_instances'][key],
                                       b['pred_instances'][key])



def _fake(tmp_path, name, script):
    """An executable ``name`` in tmp_path/bin (a stand-in for a program)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text('#!/usr/bin/env bash\n' + script)
    path.chmod(0o755)
    return bin_dir


def _bash(script, *args, **env):
    """Run a tools/ shell script with ``env`` on top of this environment,
    without OMP_NUM_THREADS."""
    env = {k: v for k, v in dict(os.environ, **env).items()
           if k != 'OMP_NUM_THREADS'}
    return subprocess.run(['bash', script, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=env)


def test_dist_train_passes_multi_node_settings_to_torchrun(tmp_path):
    """dist_train.sh hands NNODES / NODE_RANK / MASTER_ADDR / PORT to
    torchrun and, without CUDA, gives each process cores/PROCS threads."""
    _fake(tmp_path, 'python', (
        # `python -c 'import sys, torch; ... cuda ...'`: no CUDA here
        'if [ "$1" = -c ]; then exit 1; fi\n'
        'echo "OMP_NUM_THREADS=$OMP_NUM_THREADS $*"\n'))
    proc = _bash('tools/dist_train.sh', 'cfg.py', 2, '--amp',
                 PYTHON=str(tmp_path / 'bin/python'), NNODES='2',
                 NODE_RANK='1', MASTER_ADDR='10.0.0.7', PORT='29611')
    assert proc.returncode == 0, proc.stderr
    cores = int(subprocess.run(['nproc'], capture_output=True,
                               text=True).stdout)
    assert proc.stdout.startswith(f'OMP_NUM_THREADS={max(1, cores // 2)} ')
    for arg in ('-m torch.distributed.run', '--nnodes=2', '--node_rank=1',
                '--master_addr=10.0.0.7', '--nproc_per_node=2',
                '--master_port=29611',
                'tools/train.py cfg.py --launcher pytorch --amp'):
        assert arg in proc.stdout, proc.stdout


def test_slurm_scripts_start_one_task_per_gpu(tmp_path):
    """tools/slurm_*.sh cannot run here (no Slurm, no GPUs): check the srun
    command they build, with a stand-in srun that prints it."""
    bin_dir = _fake(tmp_path, 'srun', 'echo "$*"\n')
    env = dict(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               SRUN_ARGS='--qos=high --time=1:00:00')
    proc = _bash('tools/slurm_train.sh', 'gpu', 'vim', 'cfg.py',
                 '--work-dir', 'w', GPUS='16', **env)
    assert proc.returncode == 0, proc.stderr
    for arg in ('-p gpu', '--job-name=vim', '--gres=gpu:8', '--ntasks=16',
                '--ntasks-per-node=8', '--qos=high --time=1:00:00',
                'tools/train.py cfg.py --launcher slurm --work-dir w'):
        assert arg in proc.stdout, proc.stdout
    proc = _bash('tools/slurm_test.sh', 'gpu', 'vim', 'cfg.py', 'c.pth',
                 '--tta', GPUS='4', **env)
    assert proc.returncode == 0, proc.stderr
    for arg in ('--ntasks=4', '--ntasks-per-node=4', '--gres=gpu:4',
                'tools/test.py cfg.py c.pth --launcher slurm --tta'):
        assert arg in proc.stdout, proc.stdout


def test_finish_distributed_waits_and_destroys_the_group(tmp_path):
    """tools/train.py and tools/test.py end a multi-process run with
    finish_distributed(): the group is gone before interpreter exit (left
    to exit, rank 0 once aborted with SIGABRT after a complete run)."""
    import torch.distributed as dist

    from mmvim.utils import finish_distributed
    finish_distributed()  # no group: nothing to do
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store',
                            rank=0, world_size=1)
    assert dist.is_initialized()
    finish_distributed()
    assert not dist.is_initialized()
