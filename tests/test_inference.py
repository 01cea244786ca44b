"""mmseg's MMSegInferencer and mmdet's DetInferencer on mmvim configs (by
path and by mmvim:: name), mmvim.apis' versions of them, tools/infer.py."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmvim.datasets import (
    DemoShapesDataset,
    make_demo_detection,
    make_demo_segmentation,
)

ROOT = Path(__file__).resolve().parents[1]
SEG = 'configs/demo_upernet_vim_shapes.py'
DET = 'configs/demo_mask_rcnn_vmamba_shapes.py'
SEG_NAME = 'mmvim::' + SEG
DET_NAME = 'mmvim::' + DET


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """Two demo images per task and a freshly initialised checkpoint of
    each demo config, saved without meta (as an official release)."""
    from mmvim.utils import build_model, load_config
    root = tmp_path_factory.mktemp('infer')
    out = dict(
        seg_images=os.path.join(make_demo_segmentation(
            str(root / 'seg'), 2, 2, 64), 'images', 'validation'),
        det_images=os.path.join(make_demo_detection(
            str(root / 'det'), 2, 2, 64), 'val2017'))
    for key, config in (('seg', SEG), ('det', DET)):
        torch.manual_seed(0)
        model = build_model(load_config(str(ROOT / config)))
        out[key] = str(root / f'{key}.pth')
        torch.save(dict(state_dict=model.state_dict()), out[key])
    return out


def _seg_outputs(result, out_dir, n=2):
    preds = result['predictions']
    assert len(preds) == n
    for pred in preds:
        assert pred.shape == (64, 64) and pred.dtype.kind in 'iu'
        assert 0 <= pred.min() and pred.max() < 4
    assert len(list(Path(out_dir, 'vis').glob('*.jpg'))) == n
    assert len(list(Path(out_dir, 'pred').glob('*.png'))) == n


@pytest.mark.parametrize('model', [str(ROOT / SEG), SEG_NAME])
def test_mmseg_inferencer_takes_path_and_name(demo, tmp_path, model):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=model, weights=demo['seg'],
                                 device='cpu')
    assert type(inferencer.model.backbone).__name__ == 'Vim'
    _seg_outputs(inferencer(demo['seg_images'], out_dir=str(tmp_path)),
                 tmp_path)


def test_mmvim_seg_inferencer_classes_from_config(demo, tmp_path):
    from mmseg.apis import MMSegInferencer

    from mmvim.apis import MMVimSegInferencer, build_inferencer
    inferencer = build_inferencer(SEG_NAME, demo['seg'], device='cpu')
    assert isinstance(inferencer, MMVimSegInferencer)
    # the checkpoint has no dataset_meta: names and colours of the config's
    # dataset, not mmseg's Cityscapes default
    classes = DemoShapesDataset.METAINFO['classes']
    assert inferencer.model.dataset_meta['classes'] == classes
    assert inferencer.visualizer.dataset_meta['classes'] == classes
    result = inferencer(demo['seg_images'], out_dir=str(tmp_path))
    _seg_outputs(result, tmp_path)
    # same weights as the stock inferencer: the same predictions
    stock = MMSegInferencer(model=SEG_NAME, weights=demo['seg'], device='cpu')
    ref = stock(demo['seg_images'])['predictions']
    for a, b in zip(result['predictions'], ref):
        np.testing.assert_array_equal(a, b)


def _det_outputs(result, out_dir, n=2):
    preds = result['predictions']
    assert len(preds) == n
    for pred in preds:
        assert {'labels', 'scores', 'bboxes', 'masks'} <= set(pred)
        assert len(pred['labels']) == len(pred['bboxes'])
    assert len(list(Path(out_dir, 'vis').glob('*.jpg'))) == n
    assert len(list(Path(out_dir, 'preds').glob('*.json'))) == n


@pytest.mark.parametrize('model', [str(ROOT / DET), DET_NAME])
def test_det_inferencer_takes_path_and_name(demo, tmp_path, model):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=model, weights=demo['det'],
                               device='cpu', show_progress=False)
    assert type(inferencer.model.backbone).__name__ == 'VMamba'
    result = inferencer(demo['det_images'], out_dir=str(tmp_path),
                        no_save_pred=False)
    _det_outputs(result, tmp_path)


def test_mmvim_det_inferencer_classes_from_config(demo, tmp_path):
    from mmvim.apis import MMVimDetInferencer, build_inferencer
    from mmvim.utils import load_config
    inferencer = build_inferencer(load_config(DET_NAME), demo['det'],
                                  device='cpu', show_progress=False)
    assert isinstance(inferencer, MMVimDetInferencer)
    meta = inferencer.model.dataset_meta
    cfg_classes = load_config(DET_NAME).test_dataloader.dataset.metainfo
    assert tuple(meta['classes']) == tuple(cfg_classes['classes'])
    assert meta['palette'] != 'random'
    _det_outputs(inferencer(demo['det_images'], out_dir=str(tmp_path),
                            no_save_pred=False), tmp_path)


def test_a_checkpoint_of_another_model_is_refused(demo):
    from mmvim.apis import build_inferencer
    from mmvim.checkpoint import CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match='holds a Vim backbone'):
        build_inferencer(DET_NAME, demo['seg'], device='cpu')


def run_infer(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / 'tools/infer.py'), *args],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONWARNINGS='ignore'))


def test_infer_tool_with_a_name(demo, tmp_path):
    proc = run_infer(SEG_NAME, demo['seg'], demo['seg_images'], '--out-dir',
                     str(tmp_path), '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / 'vis').glob('*.jpg'))) == 2
    proc = run_infer(DET_NAME, demo['seg'], demo['det_images'], '--out-dir',
                     str(tmp_path / 'det'))
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert 'holds a Vim backbone' in proc.stderr
