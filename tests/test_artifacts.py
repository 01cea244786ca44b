"""Every tool the docs name, on what a real training run writes.

``tools/train.py`` trains each demo config (segmentation: UperNet + Vim,
detection: Mask R-CNN + VMamba) for a few iterations on small demo data;
the checkpoint (with mmengine's full ``dataset_meta``, optimizer and resume
state) and the config dump it wrote then go through every tool of the README
and docs/get_started.md, as a user runs them: ``tools/test.py``,
``tools/infer.py`` (a file, a folder), both inferencers of ``mmvim.apis``,
``tools/convert_checkpoint.py``, ``tools/get_flops.py``, ``tools/erf.py`` and
``tools/train.py --resume``. Each test checks what a user looks at (the
metrics printed and written, overlay images, class names, the files each
tool writes), not only the exit code.

    .venv/bin/pytest tests/test_artifacts.py -m slow
"""
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from e2e import DET_CONFIG, SEG_CONFIG, run

pytestmark = pytest.mark.slow

SIZE = 64  # demo images (the configs resize to 128)
NUM_VAL = 2
ITERS = 2  # iterations trained; the checkpoint is iter_2.pth
TASKS = dict(
    seg=dict(config=SEG_CONFIG, metric='mIoU', family='vim',
             backbone='Vim', images='images/validation'),
    det=dict(config=DET_CONFIG, metric='coco/bbox_mAP', family='vmamba',
             backbone='VMamba', images='val2017'),
)


def data_options(task: str, data: str) -> list:
    """``--cfg-options`` values that point every loader (and the COCO
    metrics) at ``data``, without worker processes."""
    opts = []
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={data}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    if task == 'det':
        ann = f'{data}annotations/instances_val2017.json'
        opts += [f'val_evaluator.ann_file={ann}',
                 f'test_evaluator.ann_file={ann}']
    return opts


def train_options(task: str, data: str, max_iters: int) -> list:
    return ['--cfg-options', *data_options(task, data),
            'train_dataloader.batch_size=2', f'train_cfg.max_iters={max_iters}',
            'train_cfg.val_interval=1000',  # no validation: tools/test.py
            f'default_hooks.checkpoint.interval={ITERS}',
            'default_hooks.logger.interval=1']


def load(path) -> dict:
    """A checkpoint through the loader the tools use (mmvim's)."""
    from mmengine.runner import CheckpointLoader

    import mmvim  # noqa: F401  (registers mmvim's file loader)
    return CheckpointLoader.load_checkpoint(str(path), map_location='cpu')


def read_image(path) -> np.ndarray:
    assert Path(path).stat().st_size > 0, path
    img = cv2.imread(str(path))
    assert img is not None, f'{path} does not decode as an image'
    return img


@pytest.fixture(scope='module', params=sorted(TASKS))
def trained(request, tmp_path_factory):
    """One short training run per task with tools/train.py: its work dir,
    checkpoint, data, and the checkpoint's dataset_meta classes."""
    from mmvim.datasets import make_demo_detection, make_demo_segmentation
    task = request.param
    root = tmp_path_factory.mktemp(task)
    if task == 'seg':
        data = make_demo_segmentation(str(root / 'data'), 8, NUM_VAL, SIZE)
    else:
        data = make_demo_detection(str(root / 'data'), 8, NUM_VAL, SIZE) + '/'
    work = root / 'work'
    config = TASKS[task]['config']
    proc = run('python', 'tools/train.py', config, '--work-dir', work,
               *train_options(task, data, ITERS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = work / f'iter_{ITERS}.pth'
    assert (work / 'last_checkpoint').read_text().strip() == str(ckpt)
    checkpoint = load(ckpt)
    # what a training run stores next to the weights
    assert {'optimizer', 'message_hub', 'param_schedulers'} <= set(checkpoint)
    meta = checkpoint['meta']['dataset_meta']
    if task == 'seg':  # mmseg's full dataset_meta (issue 19)
        assert {'label_map', 'reduce_zero_label'} <= set(meta)
    return dict(TASKS[task], task=task, config=str(config), data=data,
                work=work, ckpt=str(ckpt), dump=str(work / config.name),
                images=Path(data, TASKS[task]['images']),
                classes=tuple(meta['classes']), checkpoint=checkpoint)


def test_test_tool_prints_and_writes_the_metrics(trained, tmp_path):
    out, vis = tmp_path / 'metrics.json', tmp_path / 'vis'
    proc = run('python', 'tools/test.py', trained['config'], trained['ckpt'],
               '--work-dir', tmp_path / 'w', '--show-dir', vis, '--out', out,
               '--cfg-options', *data_options(trained['task'],
                                              trained['data']))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines()
                if x.startswith('Test metrics'))
    metric = trained['metric']
    printed = float(re.search(rf'{re.escape(metric)}: (-?[\d.]+)',
                              line).group(1))
    written = json.loads(out.read_text())
    assert printed == pytest.approx(written[metric], abs=0.005)
    if trained['task'] == 'seg':
        assert 0 <= written['mIoU'] <= 100 and 0 <= written['aAcc'] <= 100
        overlays = sorted(vis.rglob('*.png'))
    else:
        for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'):
            assert -1 <= written[key] <= 1  # -1: no such objects
        overlays = sorted(vis.rglob('*.jpg'))
    # one per validation image: ground truth next to the prediction
    assert len(overlays) == NUM_VAL
    for path in overlays:
        assert read_image(path).shape == (SIZE, 2 * SIZE, 3)


def _check_infer_outputs(trained, out_dir: Path, names) -> None:
    """Overlays named after the inputs, of the inputs' size; raw
    predictions with labels of the checkpoint's classes."""
    vis = sorted(p.name for p in (out_dir / 'vis').iterdir())
    assert vis == sorted(names)
    for name in vis:
        assert read_image(out_dir / 'vis' / name).shape == (SIZE, SIZE, 3)
    num_classes = len(trained['classes'])
    if trained['task'] == 'seg':
        preds = sorted((out_dir / 'pred').glob('*.png'))
        assert len(preds) == len(names)
        for path in preds:
            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert label.shape == (SIZE, SIZE)
            assert label.max() < num_classes
    else:
        preds = sorted((out_dir / 'preds').glob('*.json'))
        assert [p.stem for p in preds] == sorted(Path(n).stem for n in names)
        for path in preds:
            pred = json.loads(path.read_text())
            assert len(pred['labels']) == len(pred['scores']) == \
                len(pred['bboxes']) == len(pred['masks'])
            assert all(0 <= label < num_classes for label in pred['labels'])


def _classes_line(trained) -> str:
    return 'classes (from the checkpoint): ' + ', '.join(trained['classes'])


def test_infer_tool_on_a_file_with_the_dumped_config(trained, tmp_path):
    """The config the run wrote into its work dir, and one image."""
    image = sorted(trained['images'].iterdir())[0]
    proc = run('python', 'tools/infer.py', trained['dump'], trained['ckpt'],
               image, '--out-dir', tmp_path, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _classes_line(trained) in proc.stdout
    assert f'1 overlays written to {tmp_path / "vis"}' in proc.stdout
    _check_infer_outputs(trained, tmp_path, [image.name])


def test_infer_tool_on_a_folder(trained, tmp_path):
    """A folder as users have them: images, a stray file, a subfolder."""
    folder = tmp_path / 'images'
    shutil.copytree(trained['images'], folder)
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'older').mkdir()
    names = sorted(p.name for p in trained['images'].iterdir())
    out = tmp_path / 'out'
    proc = run('python', 'tools/infer.py', trained['config'], trained['ckpt'],
               folder, '--out-dir', out, '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'skipped 1 files of {folder} that are not images: notes.txt' \
        in proc.stdout
    assert _classes_line(trained) in proc.stdout
    _check_infer_outputs(trained, out, names)


def _predict(inferencer, images, task, **kwargs):
    result = inferencer(images, **kwargs)['predictions']
    if task == 'seg':
        return [np.asarray(p) for p in result]
    return [(p['labels'], np.round(p['bboxes'], 3).tolist())
            for p in result]


def test_inferencers_of_mmvim_apis(trained, tmp_path):
    """build_inferencer on the trained checkpoint: the checkpoint's classes
    in the model and the visualizer, predictions as the stock inferencer's
    (which loads the file its own way), overlays written."""
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    from mmvim.apis import (
        MMVimDetInferencer,
        MMVimSegInferencer,
        build_inferencer,
    )
    task = trained['task']
    kwargs = {} if task == 'seg' else dict(show_progress=False)
    inferencer = build_inferencer(trained['config'], trained['ckpt'],
                                  device='cpu', **kwargs)
    assert isinstance(inferencer, MMVimSegInferencer if task == 'seg'
                      else MMVimDetInferencer)
    assert inferencer.classes_from == 'checkpoint'
    assert tuple(inferencer.model.dataset_meta['classes']) == \
        trained['classes']
    assert tuple(inferencer.visualizer.dataset_meta['classes']) == \
        trained['classes']
    images = [str(p) for p in sorted(trained['images'].iterdir())]
    ours = _predict(inferencer, images, task, out_dir=str(tmp_path))
    assert len(list((tmp_path / 'vis').iterdir())) == NUM_VAL
    stock = (MMSegInferencer(trained['config'], trained['ckpt'],
                             device='cpu') if task == 'seg' else
             DetInferencer(trained['config'], trained['ckpt'], device='cpu',
                           show_progress=False))
    theirs = _predict(stock, images, task)
    for a, b in zip(ours, theirs):
        if task == 'seg':
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


def _convert_whole_model(trained, dst) -> None:
    """--config: the weights and dataset_meta without the training state,
    which the inferencer uses as the original."""
    from mmvim.apis import build_inferencer
    proc = run('python', 'tools/convert_checkpoint.py', trained['family'],
               trained['ckpt'], dst, '--config', trained['config'])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'comes from a training run (iteration {ITERS})' in proc.stdout
    assert 'without message_hub, optimizer' in proc.stdout
    converted = load(dst)
    assert set(converted) == {'state_dict', 'meta'}
    original = trained['checkpoint']['state_dict']
    assert converted['state_dict'].keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(converted['state_dict'][key], value), key
    assert tuple(converted['meta']['dataset_meta']['classes']) == \
        trained['classes']
    inferencer = build_inferencer(trained['config'], str(dst), device='cpu')
    assert inferencer.classes_from == 'checkpoint'


def _convert_backbone(trained, dst) -> None:
    """No --config: the backbone alone, which init_cfg loads (Vim at the
    demo's 128 px, so the position grid stays as trained)."""
    from mmvim.utils import build_model, load_config
    extra = ['--img-size', '128'] if trained['family'] == 'vim' else []
    proc = run('python', 'tools/convert_checkpoint.py', trained['family'],
               trained['ckpt'], dst, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'is its backbone alone' in proc.stdout
    assert "init_cfg=dict(type='Pretrained'" in proc.stdout
    cfg = load_config(trained['config'])
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(dst))
    model = build_model(cfg, pretrained=True)  # loads init_cfg
    original = trained['checkpoint']['state_dict']
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, original['backbone.' + key]), key


def test_convert_checkpoint_on_a_trained_file(trained, tmp_path):
    """Both uses of convert_checkpoint.py on a training checkpoint, one per
    task (the code is the same for both; each run costs a tool start)."""
    convert = dict(seg=_convert_backbone, det=_convert_whole_model)
    convert[trained['task']](trained, tmp_path / 'converted.pth')


def test_get_flops_on_the_dumped_config(trained):
    proc = run('python', 'tools/get_flops.py', trained['dump'], '--shape',
               '128', '128')
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    match = re.fullmatch(r'.* at 128x128: ([\d.]+) M params, ([\d.]+) GFLOPs',
                         first)
    assert match, first
    # the parameters of the model the run trained (its buffers excluded)
    params = sum(v.numel() for k, v in trained['checkpoint']['state_dict']
                 .items() if not k.endswith(('running_mean', 'running_var',
                                             'num_batches_tracked')))
    assert float(match.group(1)) == pytest.approx(params / 1e6, abs=0.005)
    assert float(match.group(2)) > 0


def test_erf_with_the_trained_checkpoint(trained, tmp_path):
    out = tmp_path / 'erf.png'
    proc = run('python', 'tools/erf.py', trained['config'], '--checkpoint',
               trained['ckpt'], '--size', str(SIZE), '--num-images', '1',
               '--data-root', trained['data'], '--out', out,
               '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'weights: {trained["ckpt"]}' in proc.stdout
    assert 'RANDOM weights' not in proc.stderr
    assert f'1 from {trained["images"]}' in proc.stdout
    assert read_image(out).ndim == 3
    erf = np.load(tmp_path / 'erf.npy')
    assert erf.shape == (SIZE, SIZE) and np.isfinite(erf).all()
    assert erf.min() >= 0 and erf.max() > 0


def test_resume_continues_from_the_written_checkpoint(trained, tmp_path):
    work = tmp_path / 'resumed'
    proc = run('python', 'tools/train.py', trained['config'], '--work-dir',
               work, '--resume', trained['ckpt'],
               *train_options(trained['task'], trained['data'], ITERS + 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = next(work.rglob('*.log')).read_text()
    assert f'resumed epoch: 0, iter: {ITERS}' in log
    assert f'Iter(train) [{ITERS + 1}/{ITERS + 1}]' in log
    assert f'Iter(train) [{ITERS}/' not in log  # nothing trained twice
    resumed = load(work / f'iter_{ITERS + 1}.pth')
    assert resumed['meta']['iter'] == ITERS + 1
    # the optimizer went on from the stored state: one more Adam step
    steps = [s['step'] for s in resumed['optimizer']['state'].values()]
    assert all(float(s) == ITERS + 1 for s in steps)
