"""Official dense releases (UperNet / Mask R-CNN / Cascade Mask R-CNN) load
into our configs as they are.

The real files cannot be downloaded here, so each config's full-size model
writes its weights out in the official dense layout (``backbone.`` + the
official dense wrapper's keys, checked key by key and shape by shape against
the key lists of the official code in tests/data/official_keys, heads under
mmseg's / mmdet's names, wrapped as mmengine saves them), the model is
overwritten with NaN, and the file comes back through the loader that
tools/test.py uses. Weights and outputs must be identical.
"""
import json
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmvim.checkpoint import CheckpointMismatchError
from mmvim.checkpoint.dense import convert_model_file, load_model_checkpoint
from mmvim.utils import build_model

KEYS = Path(__file__).parent / 'data' / 'official_keys'
SIZE = 64

# config -> official dense wrapper whose keys its backbone must carry
RELEASED = {
    'upernet_vmamba_t_ade20k': 'vmamba_tiny_dense',
    'upernet_vmamba_s_ade20k': 'vmamba_small_dense',
    'upernet_vmamba_b_ade20k': 'vmamba_base_dense',
    'mask_rcnn_vmamba_t_fpn_1x_coco': 'vmamba_tiny_dense',
    'mask_rcnn_vmamba_s_fpn_1x_coco': 'vmamba_small_dense',
    'mask_rcnn_vmamba_b_fpn_1x_coco': 'vmamba_base_dense',
    'mask_rcnn_vmamba_t_fpn_ms_3x_coco': 'vmamba_tiny_dense',
    'mask_rcnn_vmamba_s_fpn_ms_3x_coco': 'vmamba_small_dense',
    'upernet_mambavision_t_ade20k': 'mambavision_T_dense',
    'upernet_mambavision_s_ade20k': 'mambavision_S_dense',
    'upernet_mambavision_b_ade20k': 'mambavision_B_dense',
    'cascade_mask_rcnn_mambavision_t_fpn_3x_coco': 'mambavision_T_dense',
    'cascade_mask_rcnn_mambavision_s_fpn_3x_coco': 'mambavision_S_dense',
    'cascade_mask_rcnn_mambavision_b_fpn_3x_coco': 'mambavision_B_dense',
}


_MODELS = {}


def build(name: str):
    """The config's full-size model (no pretrained init, BN for SyncBN),
    eval mode."""
    if name not in _MODELS:
        torch.manual_seed(0)
        model = build_model(Config.fromfile(f'configs/{name}.py'))
        _MODELS.clear()  # keep one full-size model in memory at a time
        _MODELS[name] = model
    return _MODELS[name]


def outputs(model):
    """Decode-head logits (segmentors) or backbone + neck maps (detectors)
    on a fixed small input. MambaVision's windows (up to 112, padded: 12,544
    tokens) are narrowed to 8 for this: they hold no weights, and a padded
    112-window on a 64 px input only costs time."""
    x = torch.randn(1, 3, SIZE, SIZE + 32,
                    generator=torch.Generator().manual_seed(1))
    for level in getattr(model.backbone, 'levels', []):
        if level.window_size:
            level.window_size = min(level.window_size, 8)
    with torch.no_grad():
        if hasattr(model, 'decode_head'):
            return (model._forward(x), )
        return tuple(model.extract_feat(x))


def official_layout(model, release: str) -> dict:
    """The model's weights as the official training code saved them: a dict
    with 'meta', 'state_dict' and 'message_hub' (mmengine's layout) whose
    ``backbone.`` keys must equal the official dense wrapper's key list."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    facts = json.loads((KEYS / f'{release}.json').read_text())['state_dict']
    backbone = {k[len('backbone.'):]: tuple(v.shape) for k, v in state.items()
                if k.startswith('backbone.')}
    assert backbone == {k: tuple(v) for k, v in facts.items()}, release
    return dict(meta=dict(mmengine_version='0.10.1', iter=160000,
                          dataset_meta=dict(classes=('a', 'b'))),
                state_dict=state,
                message_hub=dict(log_scalars={}, runtime_info={}))


def poison(model):
    """Every floating tensor of the model -> NaN (a key the loader missed
    would show in the outputs as well as in the weights)."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.fill_(float('nan'))


@pytest.mark.parametrize('name', sorted(RELEASED))
def test_official_dense_release_loads_and_gives_same_outputs(name, tmp_path):
    model = build(name)
    before = outputs(model)
    saved = official_layout(model, RELEASED[name])
    path = tmp_path / 'official.pth'
    torch.save(saved, path)
    poison(model)
    _, report = load_model_checkpoint(model, str(path), strict=True)
    assert report.ok and not report.dropped
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved['state_dict'][key]), key
    for a, b in zip(before, outputs(model)):
        assert torch.equal(a, b)


def test_legacy_vmamba_names_are_converted(tmp_path):
    """Older VMamba files name the block norm ``ln_1`` and the mixer
    ``self_attention``; they load into the same weights."""
    model = build('upernet_vmamba_t_ade20k')
    state = model.state_dict()
    legacy = {}
    for key, value in state.items():
        key = re.sub(r'(blocks\.\d+)\.norm\.', r'\1.ln_1.', key)
        legacy[re.sub(r'(blocks\.\d+)\.op\.', r'\1.self_attention.', key)] = \
            value.clone()
    assert any('self_attention' in k for k in legacy)
    _, report = load_model_checkpoint(model, 'legacy.pth', checkpoint=dict(
        state_dict=legacy))
    assert report.ok
    assert sum(k != v for k, v in report.renamed.items()) > 100


def _file(tmp_path, model, name='ckpt.pth'):
    path = tmp_path / name
    torch.save(dict(state_dict=model.state_dict()), path)
    return str(path)


def test_wrong_family_is_named(tmp_path):
    path = _file(tmp_path, build('upernet_mambavision_t_ade20k'))
    model = build('upernet_vmamba_t_ade20k')
    with pytest.raises(CheckpointMismatchError,
                       match=r'holds a MambaVision backbone.*builds a VMamba'):
        load_model_checkpoint(model, path)


def test_wrong_size_is_named(tmp_path):
    path = _file(tmp_path, build('upernet_vmamba_s_ade20k'))
    model = build('upernet_vmamba_t_ade20k')
    first = model.backbone.layers[0].blocks[0].norm.weight.detach().clone()
    with pytest.raises(CheckpointMismatchError) as err:
        load_model_checkpoint(model, path)
    message = str(err.value)
    assert 'depths (2, 2, 15, 2), width 96' in message
    assert 'depths (2, 2, 8, 2), width 96' in message
    assert 'UNEXPECTED' in message and 'backbone.layers.2.blocks.' in message
    # nothing was loaded
    assert torch.equal(first, model.backbone.layers[0].blocks[0].norm.weight)


def test_other_heads_or_classes_are_named(tmp_path):
    seg = build('upernet_vmamba_t_ade20k')
    state = {k: v for k, v in seg.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(19, 512, 1, 1)
    state['decode_head.conv_seg.bias'] = torch.zeros(19)
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)decode_head.conv_seg.weight: checkpoint '
                       r'\(19, 512, 1, 1\) vs model \(150, 512, 1, 1\).*'
                       'another number of classes'):
        load_model_checkpoint(seg, 'x.pth', checkpoint=dict(state_dict=state))
    # an UperNet file in a Mask R-CNN config of the same backbone
    det = build('mask_rcnn_vmamba_t_fpn_1x_coco')
    with pytest.raises(CheckpointMismatchError,
                       match=r'(?s)MISSING.*neck.*UNEXPECTED.*decode_head'):
        load_model_checkpoint(det, 'x.pth', checkpoint=dict(state_dict=state))


def test_backbone_only_file_is_named(tmp_path):
    model = build('upernet_vmamba_t_ade20k')
    path = tmp_path / 'imagenet.pth'
    torch.save(dict(model=model.backbone.state_dict()), path)
    with pytest.raises(CheckpointMismatchError,
                       match=r"no 'backbone.' keys: it is a VMamba backbone "
                       r".*init_cfg=dict\(type='Pretrained'"):
        load_model_checkpoint(model, str(path))


def test_non_strict_loads_what_fits(tmp_path):
    model = build('upernet_vmamba_t_ade20k')
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(19, 512, 1, 1)
    state['backbone.outnorm0.weight'] = torch.full((96, ), 2.0)
    _, report = load_model_checkpoint(model, 'x.pth', strict=False,
                                      checkpoint=dict(state_dict=state))
    assert not report.ok
    assert torch.equal(model.backbone.outnorm0.weight, torch.full((96, ), 2.))
    assert model.decode_head.conv_seg.weight.shape == (150, 512, 1, 1)


def test_runner_loads_strictly_for_test(tmp_path):
    """tools/test.py's runner (strict_load): a file that fits loads, one
    that does not stops the run before any evaluation."""
    from mmvim.engine import MMVimRunner
    model = build('upernet_vmamba_t_ade20k')
    good = _file(tmp_path, model)
    runner = MMVimRunner(model=model, work_dir=str(tmp_path),
                         default_scope='mmseg')
    runner.strict_load = True
    runner.load_checkpoint(good)
    assert runner._has_loaded
    bad = _file(tmp_path, build('upernet_vmamba_s_ade20k'), 'bad.pth')
    runner = MMVimRunner(model=build('upernet_vmamba_t_ade20k'),
                         work_dir=str(tmp_path), default_scope='mmseg')
    runner.strict_load = True
    with pytest.raises(CheckpointMismatchError, match='depths'):
        runner.load_checkpoint(bad)


def test_offline_conversion_of_a_release(tmp_path):
    model = build('upernet_mambavision_t_ade20k')
    src = tmp_path / 'official.pth'
    torch.save(official_layout(model, 'mambavision_T_dense'), src)
    dst = tmp_path / 'converted.pth'
    report = convert_model_file(str(src), str(dst), model)
    assert report.ok
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['mmvim']['whole_model']
    assert converted['meta']['iter'] == 160000
    for key, value in model.state_dict().items():
        assert torch.equal(converted['state_dict'][key], value)
