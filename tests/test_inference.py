"""mmseg's MMSegInferencer and mmdet's DetInferencer on mmvim configs (by
path and by mmvim:: name), mmvim.apis' versions of them, tools/infer.py."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
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


def _with_dataset_meta(src, dst, **dataset_meta):
    """``src``'s weights saved with ``meta['dataset_meta']``, as a training
    run saves them."""
    state = torch.load(src, weights_only=True)['state_dict']
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dataset_meta)),
               dst)
    return str(dst)


def test_seg_inferencer_with_a_training_runs_dataset_meta(demo, tmp_path):
    """mmseg's dataset_meta holds label_map and reduce_zero_label next to
    classes and palette; the visualizer takes only the two (issue 19). The
    names are the checkpoint's, not the config's."""
    from mmvim.apis import build_inferencer
    classes = ('sky', 'ball', 'box', 'roof')
    palette = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    ckpt = _with_dataset_meta(demo['seg'], tmp_path / 'run.pth',
                              classes=classes, palette=palette,
                              label_map=None, reduce_zero_label=False)
    inferencer = build_inferencer(SEG_NAME, ckpt, device='cpu')
    assert inferencer.classes_from == 'checkpoint'
    assert inferencer.model.dataset_meta == dict(classes=classes,
                                                 palette=palette)
    assert inferencer.visualizer.dataset_meta['classes'] == classes
    _seg_outputs(inferencer(demo['seg_images'], out_dir=str(tmp_path)),
                 tmp_path)
    assert inferencer.visualizer.dataset_meta['palette'] == palette


def test_seg_inferencer_fills_a_missing_palette(demo, tmp_path):
    from mmvim.apis import build_inferencer
    # as many classes as the config's: its colours
    ckpt = _with_dataset_meta(demo['seg'], tmp_path / 'a.pth',
                              classes=('a', 'b', 'c', 'd'))
    meta = build_inferencer(SEG_NAME, ckpt, device='cpu').model.dataset_meta
    assert [tuple(c) for c in meta['palette']] == \
        [tuple(c) for c in DemoShapesDataset.METAINFO['palette']]
    # other classes: one fixed colour each, and drawing works
    ckpt = _with_dataset_meta(demo['seg'], tmp_path / 'b.pth',
                              classes=('a', 'b', 'c', 'd', 'e'))
    inferencer = build_inferencer(SEG_NAME, ckpt, device='cpu')
    palette = inferencer.model.dataset_meta['palette']
    assert len(palette) == 5 and len({tuple(c) for c in palette}) == 5
    inferencer(demo['seg_images'], out_dir=str(tmp_path / 'out'))
    assert len(list((tmp_path / 'out' / 'vis').glob('*.jpg'))) == 2


def test_det_inferencer_with_a_training_runs_dataset_meta(demo, tmp_path):
    from mmvim.apis import build_inferencer
    classes = ('ball', 'box', 'roof')
    ckpt = _with_dataset_meta(demo['det'], tmp_path / 'run.pth',
                              classes=classes, palette=[(1, 2, 3)] * 3)
    inferencer = build_inferencer(DET_NAME, ckpt, device='cpu',
                                  show_progress=False)
    assert inferencer.classes_from == 'checkpoint'
    assert tuple(inferencer.model.dataset_meta['classes']) == classes
    _det_outputs(inferencer(demo['det_images'], out_dir=str(tmp_path),
                            no_save_pred=False), tmp_path)
    assert tuple(inferencer.visualizer.dataset_meta['classes']) == classes


def test_list_image_inputs(tmp_path):
    from mmvim.apis import InferenceInputError, list_image_inputs
    folder = tmp_path / 'in'
    folder.mkdir()
    with pytest.raises(InferenceInputError,
                       match=r'no images in folder .* \(it is empty\)'):
        list_image_inputs(str(folder))
    (folder / 'sub').mkdir()
    (folder / 'notes.txt').write_text('x')
    (folder / 'fake.jpg').write_text('not a jpeg')
    with pytest.raises(InferenceInputError, match=(
            r'2 other files: fake.jpg, notes.txt; subfolders sub: pass one '
            'of them')):
        list_image_inputs(str(folder))
    with pytest.raises(InferenceInputError, match='fake.jpg is not an image'):
        list_image_inputs(str(folder / 'fake.jpg'))
    with pytest.raises(InferenceInputError, match='does not exist'):
        list_image_inputs(str(tmp_path / 'nowhere'))
    image = np.zeros((8, 8, 3), np.uint8)
    cv2.imwrite(str(folder / 'B.JPG'), image)
    cv2.imwrite(str(folder / 'a.png'), image)
    images, skipped = list_image_inputs(str(folder))
    assert [Path(p).name for p in images] == ['B.JPG', 'a.png']
    assert [Path(p).name for p in skipped] == ['fake.jpg', 'notes.txt']
    assert list_image_inputs(images[0]) == ([images[0]], [])


def test_seg_inferencer_reads_the_images_of_a_folder(demo, tmp_path):
    """mmseg's inferencer feeds every file of a folder to its pipeline;
    ours skips the files that are not images, with a warning."""
    from mmvim.apis import build_inferencer
    folder = tmp_path / 'in'
    shutil.copytree(demo['seg_images'], folder)
    (folder / 'notes.txt').write_text('x')
    inferencer = build_inferencer(SEG_NAME, demo['seg'], device='cpu')
    with pytest.warns(UserWarning, match='skipped 1 files .*: notes.txt'):
        result = inferencer(str(folder), out_dir=str(tmp_path / 'out'))
    _seg_outputs(result, tmp_path / 'out')


@pytest.mark.parametrize('case', ['empty folder', 'text file'])
def test_infer_tool_without_images_is_one_clear_line(demo, tmp_path, case):
    if case == 'empty folder':
        given = tmp_path / 'empty'
        given.mkdir()
        expected = f'error: no images in folder {given} (it is empty); ' \
            'give an image file or a folder of'
    else:
        given = tmp_path / 'notes.txt'
        given.write_text('x')
        expected = f'error: {given} is not an image'
    proc = run_infer(SEG_NAME, demo['seg'], given, '--out-dir',
                     str(tmp_path / 'out'))
    assert proc.returncode == 2
    assert proc.stderr.startswith(expected), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()
