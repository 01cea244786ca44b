"""tools/train.py and tools/test.py as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = 'configs/demo_upernet_vim_shapes.py'
DET_CONFIG = 'configs/demo_mask_rcnn_vmamba_shapes.py'


def run_tool(*args, timeout=900):
    return subprocess.run([sys.executable, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS='ignore'))


def test_train_missing_config_is_a_clear_error():
    proc = run_tool('tools/train.py', 'configs/upernet_nope.py')
    assert proc.returncode == 2
    assert "config file 'configs/upernet_nope.py' does not exist" in \
        proc.stderr
    assert 'Traceback' not in proc.stderr


def test_train_missing_dataset_names_path_and_fix(tmp_path):
    missing = tmp_path / 'nowhere'
    proc = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir',
                    str(tmp_path / 'w'), '--cfg-options',
                    f'train_dataloader.dataset.data_root={missing}')
    assert proc.returncode == 2
    assert f"train_dataloader: data_root '{missing}' does not exist" in \
        proc.stderr
    assert '--cfg-options' in proc.stderr and 'get_started' in proc.stderr


def test_test_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = run_tool('tools/test.py', DEMO_CONFIG, str(tmp_path / 'x.pth'))
    assert proc.returncode == 2
    assert 'x.pth' in proc.stderr and 'does not exist' in proc.stderr


def test_amp_on_cpu_is_a_clear_error(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip('AMP is available with CUDA')
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), 2, 2, 64)
    proc = run_tool('tools/train.py', DEMO_CONFIG, '--amp', '--work-dir',
                    str(tmp_path / 'w'), '--cfg-options',
                    f'train_dataloader.dataset.data_root={data}',
                    f'val_dataloader.dataset.data_root={data}')
    assert proc.returncode == 2 and 'needs a CUDA device' in proc.stderr
    assert 'drop --amp' in proc.stderr and 'Traceback' not in proc.stderr
    # a config that asks for AMP itself gets the same answer
    proc = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir',
                    str(tmp_path / 'w'), '--cfg-options',
                    'optim_wrapper.type=AmpOptimWrapper',
                    f'train_dataloader.dataset.data_root={data}',
                    f'val_dataloader.dataset.data_root={data}')
    assert proc.returncode == 2 and 'needs a CUDA device' in proc.stderr


@pytest.mark.slow
def test_segmentation_train_resume_and_test_end_to_end(tmp_path):
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), num_train=8,
                                  num_val=4, size=64)
    work = tmp_path / 'work'
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}',
            f'test_dataloader.dataset.data_root={data}',
            'train_dataloader.batch_size=2', 'train_cfg.max_iters=4',
            'train_cfg.val_interval=4', 'default_hooks.checkpoint.interval=2',
            'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False',
            'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']
    proc = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', str(work),
                    *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / 'iter_4.pth').is_file()
    # resume from the latest checkpoint and train two more iterations
    proc = run_tool('tools/train.py', DEMO_CONFIG, '--work-dir', str(work),
                    '--resume', *opts, 'train_cfg.max_iters=6')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resumed' in (proc.stdout + proc.stderr).lower()
    assert (work / 'iter_6.pth').is_file()
    # evaluate: prints mIoU, writes metrics and overlays
    out = tmp_path / 'metrics.json'
    proc = run_tool('tools/test.py', DEMO_CONFIG, str(work / 'iter_6.pth'),
                    '--work-dir', str(work), '--show-dir', str(tmp_path / 'vis'), '--out',
                    str(out), *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Test metrics' in proc.stdout and 'mIoU' in proc.stdout
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics['mIoU'] <= 100.0
    overlays = list((tmp_path / 'vis').rglob('*.png'))
    assert len(overlays) == 4


def test_missing_metric_annotation_file_is_reported(tmp_path):
    """CocoMetric reads its own ann_file (a data_root override does not
    move it): a missing one is reported before anything is built."""
    from mmvim.datasets import make_demo_detection
    data = make_demo_detection(str(tmp_path / 'coco'), 2, 2, 64) + '/'
    missing = tmp_path / 'elsewhere' / 'instances_val2017.json'
    proc = run_tool('tools/train.py', DET_CONFIG, '--work-dir',
                    str(tmp_path / 'w'), '--cfg-options',
                    f'train_dataloader.dataset.data_root={data}',
                    f'val_dataloader.dataset.data_root={data}',
                    f'val_evaluator.ann_file={missing}',
                    # should the check regress, fail fast instead of training
                    'train_cfg.max_iters=1', 'train_dataloader.num_workers=0',
                    'train_dataloader.persistent_workers=False')
    assert proc.returncode == 2
    assert f"val_evaluator: ann_file '{missing}' does not exist" in \
        proc.stderr
    assert 'val_evaluator.ann_file=' in proc.stderr


@pytest.mark.slow
def test_detection_train_and_test_end_to_end(tmp_path):
    """The mmdet side of the tools: Mask R-CNN trains, tests, prints AP."""
    from mmvim.datasets import make_demo_detection
    data = make_demo_detection(str(tmp_path / 'coco'), 8, 4, 64) + '/'
    ann = data + 'annotations/instances_val2017.json'
    work = tmp_path / 'work'
    opts = ['--cfg-options']
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={data}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    opts += [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
             'train_dataloader.batch_size=2', 'train_cfg.max_iters=2',
             'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2']
    proc = run_tool('tools/train.py', DET_CONFIG, '--work-dir', str(work),
                    *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / 'iter_2.pth').is_file()
    out = tmp_path / 'metrics.json'
    proc = run_tool('tools/test.py', DET_CONFIG, str(work / 'iter_2.pth'),
                    '--work-dir', str(work), '--show-dir',
                    str(tmp_path / 'vis'), '--out', str(out), *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Test metrics' in proc.stdout and 'coco/bbox_mAP' in proc.stdout
    metrics = json.loads(out.read_text())
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert -1.0 <= metrics[key] <= 1.0
    assert len(list((tmp_path / 'vis').rglob('*.jpg'))) == 4


def test_missing_pretrained_backbone_is_reported_before_training(tmp_path):
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), 2, 2, 64)
    proc = run_tool('tools/train.py', 'configs/upernet_vim_ti_ade20k.py',
                    '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                    f'train_dataloader.dataset.data_root={data}',
                    f'val_dataloader.dataset.data_root={data}',
                    'model.backbone.init_cfg.checkpoint=nowhere/vim_t.pth')
    assert proc.returncode == 2
    assert ("model.backbone.init_cfg.checkpoint 'nowhere/vim_t.pth' does "
            'not exist') in proc.stderr
    assert 'get_started.md' in proc.stderr and 'Traceback' not in proc.stderr


def test_launcher_pytorch_outside_torchrun_is_a_clear_error(tmp_path):
    """--launcher pytorch runs on CPU machines too (tests/test_distributed
    .py), but only under torchrun, which sets the process group variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')}
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', DEMO_CONFIG, '--launcher',
         'pytorch', '--work-dir', str(tmp_path / 'w')], cwd=ROOT,
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert 'started by torchrun' in proc.stderr
    assert 'tools/dist_train.sh' in proc.stderr
    assert 'Traceback' not in proc.stderr


def _demo_model_file(path, config, **backbone):
    """A whole-model checkpoint of ``config``'s model, with backbone
    settings changed by ``backbone``."""
    import torch

    from mmvim.utils import build_model, load_config
    cfg = load_config(str(ROOT / config))
    cfg.model.backbone.update(backbone)
    torch.save(dict(state_dict=build_model(cfg).state_dict()), path)
    return str(path)


def test_test_with_a_checkpoint_of_another_size_names_it(tmp_path):
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), 2, 2, 64)
    ckpt = _demo_model_file(tmp_path / 'deeper.pth', DEMO_CONFIG, depth=8)
    proc = run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--work-dir',
                    str(tmp_path / 'w'), '--cfg-options',
                    f'test_dataloader.dataset.data_root={data}')
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert "Vim backbone has depth 8, width 96; this model builds depth 6" \
        in proc.stderr
    assert 'UNEXPECTED' in proc.stderr and 'backbone.layers.6.' in \
        proc.stderr


def test_convert_whole_model_file(tmp_path):
    src = _demo_model_file(tmp_path / 'model.pth', DET_CONFIG)
    dst = tmp_path / 'converted.pth'
    proc = run_tool('tools/convert_checkpoint.py', 'vmamba', src, str(dst),
                    '--config', DET_CONFIG)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert dst.is_file() and 'the whole model of' in proc.stdout
    proc = run_tool('tools/convert_checkpoint.py', 'mambavision', src,
                    str(dst), '--config', DET_CONFIG)
    assert proc.returncode == 2
    assert 'builds a VMamba backbone, not mambavision' in proc.stderr


def test_test_time_augmentation_with_a_whole_model_file(tmp_path):
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), 2, 2, 64)
    ckpt = _demo_model_file(tmp_path / 'model.pth', DEMO_CONFIG)
    proc = run_tool('tools/test.py', DEMO_CONFIG, ckpt, '--tta',
                    '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                    f'test_dataloader.dataset.data_root={data}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Test metrics' in proc.stdout and 'mIoU' in proc.stdout
    log = '\n'.join(p.read_text() for p in (tmp_path / 'w').rglob('*.log'))
    assert 'all keys of the model filled' in log
    proc = run_tool('tools/test.py', DET_CONFIG, ckpt, '--tta')
    assert proc.returncode == 2 and 'defines no tta_model' in proc.stderr
