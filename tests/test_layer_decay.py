"""VimLayerDecayOptimizerConstructor reaches Vim's blocks (layers.i)."""
import pytest
import torch.nn as nn

from mmvim.models import Vim


class Segmentor(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Vim('tiny', depth=4, embed_dims=32, img_size=32,
                            with_cls_token=True)
        self.decode_head = nn.Conv2d(32, 4, 1)


def build(model, **paramwise):
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

    import mmvim  # noqa: F401
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='VimLayerDecayOptimizerConstructor',
        optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(
            type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=paramwise))
    wrapper = constructor(model)
    lookup = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            lookup[id(p)] = (group['lr'], group['weight_decay'])
    return {n: lookup[id(p)] for n, p in model.named_parameters()}


def test_blocks_embeddings_and_heads_get_their_scales():
    model = Segmentor()
    got = build(model, layer_decay_rate=0.5)
    lr = 1e-3
    assert got['backbone.pos_embed'] == pytest.approx((lr * 0.5 ** 5, 0.0))
    assert got['backbone.cls_token'][0] == pytest.approx(lr * 0.5 ** 5)
    assert got['backbone.patch_embed.proj.weight'] == pytest.approx(
        (lr * 0.5 ** 5, 0.05))
    for i in range(4):
        w = got[f'backbone.layers.{i}.mixer.in_proj.weight']
        assert w == pytest.approx((lr * 0.5 ** (4 - i), 0.05))
        for name in ('A_log', 'A_b_log', 'D', 'D_b', 'dt_proj.bias'):
            assert got[f'backbone.layers.{i}.mixer.{name}'][1] == 0.0
        assert got[f'backbone.layers.{i}.norm.weight'][1] == 0.0
    assert got['decode_head.weight'] == pytest.approx((lr, 0.05))


def test_official_segmentation_setting_leaves_blocks_undecayed():
    """decay_blocks=False + the official no-wd rule (1-D and biases only)
    reproduce what the released seg code ran."""
    got = build(Segmentor(), layer_decay_rate=0.92, num_layers=24,
                decay_blocks=False, no_decay_names=[])
    assert got['backbone.pos_embed'] == pytest.approx((1e-3 * 0.92 ** 25,
                                                       0.05))
    assert got['backbone.layers.2.mixer.in_proj.weight'] == pytest.approx(
        (1e-3, 0.05))
    assert got['backbone.layers.2.mixer.A_log'][1] == 0.05
    assert got['backbone.layers.2.mixer.D'][1] == 0.0


def test_missing_rate_is_a_clear_error():
    with pytest.raises(ValueError, match='layer_decay_rate'):
        build(Segmentor())
