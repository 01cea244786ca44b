"""Parameters and FLOPs of a backbone preset or a config's whole model.

    python tools/get_flops.py vmamba_t                    # 224x224 backbone
    python tools/get_flops.py vmamba_t --classifier 1000  # + ImageNet head
    python tools/get_flops.py deit_t --classifier 1000    # baselines too
    python tools/get_flops.py configs/upernet_vmamba_t_ade20k.py  # 512x2048
    python tools/get_flops.py configs/mask_rcnn_vmamba_t_fpn_1x_coco.py
    python tools/get_flops.py --all   # every config -> flops_models.json

FLOPs follow fvcore / mmengine (one multiply-add = one FLOP; element-wise
ops, softmax and activations not counted) with the selective scan counted
as 9*B*L*D*N (+B*D*L for the D skip) as the official VMamba analysis, and
F.scaled_dot_product_attention as its two products (mmvim.utils.flops).

What is counted:

- preset: the backbone (``--classifier N`` adds the N-way Linear).
- mmseg config: ``EncoderDecoder._forward`` on one whole image = backbone +
  neck + decode head (the auxiliary head only runs in training).
- mmdet config (two-stage): backbone + neck + the RPN head's convs + every
  box-head stage on ``test_cfg.rpn.max_per_img`` proposals (1000) + every
  mask-head stage on ``test_cfg.rcnn.max_per_img`` RoIs (100), as mmdet
  2.x ``forward_dummy`` (the convention of the published Swin / ConvNeXt /
  MambaVision detector FLOPs) and mmdet 3.3's ``_forward`` for Mask R-CNN
  when its RPN keeps 1000 proposals (VMamba's numbers). Anchors, NMS, box
  decoding and RoIAlign have no multiply-adds counted.

Default input (H W): 224x224 for presets, 512x2048 for mmseg configs,
1280x800 for mmdet configs (the shapes of the published tables), or the
fixed size of a ``BatchFixedSizePad`` batch augment when the config pads
every image to one size (the Vim ViTDet config: 1024x1024).
"""
import argparse
import glob
import os
import sys
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET_SHAPE = (224, 224)
DEFAULT_SHAPES = {'mmseg': (512, 2048), 'mmdet': (1280, 800)}

# published (params M, GFLOPs, source) per config / preset (with the 1000-way
# classifier, at 224); see ../shared/anchors and the papers
PUBLISHED = {
    'upernet_vmamba_t_ade20k': (62, 949, 'VMamba README'),
    'upernet_vmamba_s_ade20k': (82, 1028, 'VMamba README'),
    'upernet_vmamba_b_ade20k': (122, 1170, 'VMamba README'),
    'mask_rcnn_vmamba_t_fpn_1x_coco': (50, 271, 'VMamba README'),
    'mask_rcnn_vmamba_t_fpn_ms_3x_coco': (50, 271, 'VMamba README'),
    'mask_rcnn_vmamba_s_fpn_1x_coco': (
        70, 384, 'VMamba README (analyze/flops.py: 348.9)'),
    'mask_rcnn_vmamba_s_fpn_ms_3x_coco': (
        70, 384, 'VMamba README (analyze/flops.py: 348.9)'),
    'mask_rcnn_vmamba_b_fpn_1x_coco': (108, 485, 'VMamba README'),
    'upernet_mambavision_t_ade20k': (55, 945, 'MambaVision README'),
    'upernet_mambavision_s_ade20k': (84, 1135, 'MambaVision README'),
    'upernet_mambavision_b_ade20k': (126, 1342, 'MambaVision README'),
    'cascade_mask_rcnn_mambavision_t_fpn_3x_coco': (
        86, 740, 'MambaVision README'),
    'cascade_mask_rcnn_mambavision_s_fpn_3x_coco': (
        108, 828, 'MambaVision README'),
    'cascade_mask_rcnn_mambavision_b_fpn_3x_coco': (
        145, 964, 'MambaVision README'),
    'upernet_vim_ti_ade20k': (12.9011, None, 'Vim repo (12,901,100)'),
    'upernet_vim_s_ade20k': (46, None, 'Vim paper Table 2'),
    'vim_t': (7.148, None, 'Vim (computed 7,148,008)'),
    'vim_s': (25.797, None, 'Vim (computed 25,796,584)'),
    'vim_b': (97.598, None, 'Vim (computed 97,598,440)'),
    'vmamba_t': (30.249, 4.9056, 'VMamba README / analyze'),
    'vmamba_s': (50.148, 8.7158, 'VMamba README / analyze'),
    'vmamba_b': (88.558, 15.3589, 'VMamba README / analyze'),
    'mambavision_t': (31.8, 4.4, 'MambaVision README'),
    'mambavision_s': (50.1, 7.5, 'MambaVision README'),
    'mambavision_b': (97.7, 15.0, 'MambaVision README'),
    'deit_t': (5.7, 1.3, 'DeiT paper (fvcore: 1.26)'),
    'deit_s': (22, 4.6, 'DeiT paper'),
    'swin_t': (28, 4.5, 'Swin paper'),
}


def _setup_path() -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def config_paths() -> list:
    """Every config under configs/ but the demos."""
    return sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                  if not os.path.basename(p).startswith('demo_'))


def default_shape(cfg) -> tuple:
    """(H, W) a config's model is counted at when ``--shape`` is not
    given (see the module docstring)."""
    pre = cfg.model.get('data_preprocessor') or {}
    for aug in pre.get('batch_augments') or []:
        if aug.get('type') == 'BatchFixedSizePad':
            size = aug['size']
            return (size, size) if isinstance(size, int) else tuple(size)
    return DEFAULT_SHAPES[cfg.get('default_scope', 'mmseg')]


def _cfg_get(node, key, default):
    value = node.get(key) if node is not None else None
    return default if value is None else value


def detector_forward(model, num_proposals=None, num_mask_rois=None):
    """``fn(x)`` running what a two-stage mmdet detector computes for one
    image (see the module docstring), and a description of it."""
    import numpy as np
    import torch
    from mmdet.structures.bbox import bbox2roi

    test_cfg = model.test_cfg or {}
    if num_proposals is None:
        num_proposals = _cfg_get(test_cfg.get('rpn'), 'max_per_img', 1000)
    if num_mask_rois is None:
        num_mask_rois = _cfg_get(test_cfg.get('rcnn'), 'max_per_img', 100)
    roi_head = model.roi_head
    stages = getattr(roi_head, 'num_stages', None)

    def fn(x):
        feats = model.extract_feat(x)
        outs = [model.rpn_head(feats)] if model.with_rpn else []
        # proposals: fixed boxes spread over the image (only their number
        # matters for the count; numpy, so the trace holds a constant)
        rng = np.random.default_rng(0)
        size = np.array(x.shape[:-3:-1], dtype=np.float32)  # (W, H)
        xy = rng.random((num_proposals, 2), np.float32) * size * 0.75
        wh = (rng.random((num_proposals, 2), np.float32) * 0.25 + 0.02) \
            * size
        boxes = torch.from_numpy(np.concatenate([xy, xy + wh], 1))
        rois = bbox2roi([boxes.to(x)])
        for stage in range(stages or 1):
            args = (stage, ) if stages else ()
            if roi_head.with_bbox:
                outs.append(roi_head._bbox_forward(*args, feats, rois))
            if roi_head.with_mask:
                outs.append(roi_head._mask_forward(*args, feats,
                                                   rois[:num_mask_rois]))
        return outs

    times = f'{stages}x ' if stages else ''
    parts = ['backbone', 'neck'] if model.with_neck else ['backbone']
    if model.with_rpn:
        parts.append('RPN head convs')
    if roi_head.with_bbox:
        parts.append(f'{times}box head on {num_proposals} proposals')
    if roi_head.with_mask:
        parts.append(f'{times}mask head on {num_mask_rois} RoIs')
    return fn, ' + '.join(parts) + ' (not counted: anchors, NMS, box ' \
        'decoding, RoIAlign)'


def build(target: str, cfg_options: Optional[dict] = None):
    """(model, fn, what is counted, default shape) for a preset name or a
    config file (with ``cfg_options`` merged); ``fn(x)`` is what gets
    counted."""
    _setup_path()
    if not target.endswith('.py'):
        from mmvim.utils.presets import PRESETS, build_preset
        if target not in PRESETS:
            raise SystemExit(f'error: unknown preset {target!r}; choose one '
                             f'of {sorted(PRESETS)} or pass a config file')
        model = build_preset(target, img_size=PRESET_SHAPE[0])
        model.eval()  # (mmseg's ViT.train returns None: no chaining)
        return model, model.forward, 'backbone', PRESET_SHAPE
    from mmvim.utils import build_model, load_config
    cfg = load_config(target, cfg_options)
    shape = default_shape(cfg)
    model = build_model(cfg)  # no pretrained weights, BN for SyncBN, eval
    if cfg.get('default_scope', 'mmseg') == 'mmseg':
        from mmseg.models import EncoderDecoder
        what = 'backbone + neck + decode head (EncoderDecoder._forward; ' \
            'auxiliary head not run at inference)'
        if not model.with_neck:
            what = what.replace(' + neck', '')
        if type(model)._forward is not EncoderDecoder._forward:
            return model, model._forward, what, shape

        def fn(x):
            # = EncoderDecoder._forward, with the decode head called as a
            # module so that its resizes count under its name
            return model.decode_head(model.extract_feat(x))

        return model, fn, what, shape
    if not hasattr(model, 'roi_head'):
        # a one-stage detector: mmdet's own tensor-mode forward
        return model, model._forward, 'mmdet _forward (tensor mode)', shape
    fn, what = detector_forward(model)
    return model, fn, what, shape


def measure(target: str, shape=None, classifier: int = 0,
            cfg_options: Optional[dict] = None) -> dict:
    """Params and FLOPs of a preset or config (JSON-able dict)."""
    import torch

    from mmvim.utils.flops import analyse_flops
    torch.manual_seed(0)
    model, fn, what, default = build(target, cfg_options)
    shape = tuple(shape or default)
    last = []

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = fn(x)
            last.append(out)
            return out

    x = torch.randn(1, 3, *shape)
    with torch.no_grad():
        res = analyse_flops(Forward(), (x, ))
    flops = res['total']
    params = sum(p.numel() for p in model.parameters())
    if classifier:
        feats = last[-1]
        dim = (feats[-1] if isinstance(feats, (list, tuple))
               else feats).shape[1]
        flops += dim * classifier
        params += dim * classifier + classifier
        what += f' + {classifier}-way linear classifier'
    parts = {}
    if target.endswith('.py'):
        for name, _ in model.named_children():
            value = res['by_module'].get(f'model.{name}', 0)
            if value:
                parts[name] = value / 1e9
        for head in ('bbox_head', 'mask_head'):
            value = res['by_module'].get(f'model.roi_head.{head}', 0)
            if value:
                parts[f'roi_head.{head}'] = value / 1e9
        rest = res['total'] - sum(res['by_module'].get(f'model.{n}', 0)
                                  for n, _ in model.named_children())
        if rest:
            parts['(outside the submodules)'] = rest / 1e9
    name = os.path.basename(target)[:-3] if target.endswith('.py') \
        else target
    # the published numbers of a preset are the classifier's
    published = PUBLISHED.get(name) if classifier or \
        target.endswith('.py') else None
    return dict(
        target=os.path.relpath(target, ROOT) if target.endswith('.py')
        else target,
        shape=list(shape), params_M=params / 1e6, flops_G=flops / 1e9,
        counted=what, parts_G=parts,
        by_operator_G={k: v / 1e9 for k, v in sorted(
            res['by_operator'].items(), key=lambda kv: -kv[1])},
        attention_sdpa_G=res['by_operator'].get(
            'scaled_dot_product_attention', 0) / 1e9,
        not_counted_ops=res['unsupported'],
        published=None if published is None else dict(
            params_M=published[0], flops_G=published[1],
            source=published[2]))


def _pct(ours, ref):
    return '' if not ref else f'{(ours / ref - 1) * 100:+.1f}%'


def _num(value):
    return '' if value is None else f'{value:g}'


def print_table(results) -> None:
    """params / FLOPs vs the published ones (SDPA G: the attention
    products, within GFLOPs)."""
    print(f'{"model":<46}{"shape":>10}{"params M":>10}{"pub":>9}{"diff":>8}'
          f'{"GFLOPs":>10}{"pub":>9}{"diff":>9}{"SDPA G":>9}')
    for r in results:
        name = os.path.basename(r['target']).replace('.py', '')
        if 'error' in r:
            print(f'{name:<46} error: {r["error"]}')
            continue
        pub = r.get('published') or {}
        p_par, p_fl = pub.get('params_M'), pub.get('flops_G')
        print(f'{name:<46}{"x".join(map(str, r["shape"])):>10}'
              f'{r["params_M"]:>10.2f}{_num(p_par):>9}'
              f'{_pct(r["params_M"], p_par):>8}{r["flops_G"]:>10.2f}'
              f'{_num(p_fl):>9}{_pct(r["flops_G"], p_fl):>9}'
              f'{r["attention_sdpa_G"]:>9.1f}')


def run_all(out: str) -> int:
    """Every non-demo config at its default shape and every preset with a
    1000-way classifier at 224x224, each in a fresh process."""
    _setup_path()
    from mmvim.utils.bench import spawn, write_report
    configs, backbones = [], []
    for path in config_paths():
        res = spawn('tools.get_flops', 'measure', path, None, 0)
        res.setdefault('target', os.path.relpath(path, ROOT))
        configs.append(res)
        print(f'  {res["target"]}: '
              + (res['error'] if 'error' in res else
                 f'{res["params_M"]:.2f} M, {res["flops_G"]:.2f} G'),
              flush=True)
    from mmvim.utils.presets import PRESETS
    for name in PRESETS:
        res = spawn('tools.get_flops', 'measure', name, None, 1000)
        res.setdefault('target', name)
        backbones.append(res)
    print()
    print_table(configs)
    print()
    print_table(backbones)
    write_report('cpu', configs, 'flops', out, backbones=backbones,
                 convention=__doc__.split('\n\n', 2)[2].strip())
    errors = [r for r in configs + backbones if 'error' in r]
    return 1 if errors else 0


def main() -> int:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', nargs='?',
                        help='backbone preset (mmvim.utils.presets: ours '
                        'and the deit_t/deit_s/swin_t baselines) or a config '
                        'file')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: see above)')
    parser.add_argument('--classifier', type=int, default=0,
                        help='add an ImageNet-style head with this many '
                        'classes (the linear layer) to a backbone')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings (key=value), as '
                        'the other tools')
    parser.add_argument('--all', action='store_true',
                        help='every non-demo config at its default shape '
                        'and every preset (+1000-way classifier); prints '
                        'a table and writes --out')
    parser.add_argument('--out',
                        default='docs/benchmarks/flops_models.json',
                        help='JSON path for --all')
    args = parser.parse_args()
    if args.all:
        if args.target:
            parser.error('--all takes no target')
        return run_all(args.out)
    if not args.target:
        parser.error('give a preset or a config file, or --all')
    if args.cfg_options and not args.target.endswith('.py'):
        parser.error('--cfg-options needs a config file')
    res = measure(args.target, args.shape, args.classifier,
                  args.cfg_options)
    h, w = res['shape']
    print(f'{args.target} at {h}x{w}: {res["params_M"]:.2f} M params, '
          f'{res["flops_G"]:.4f} GFLOPs')
    print(f'counted: {res["counted"]}')
    for part, value in res['parts_G'].items():
        print(f'  {part:<32}{value:10.4f} G')
    print('by operator:')
    for op, value in res['by_operator_G'].items():
        print(f'  {op:<32}{value:10.4f} G')
    if res['not_counted_ops']:
        print('ops not counted: ' + ', '.join(
            f'{op} x{n}' for op, n in sorted(res['not_counted_ops'].items())))
    return 0


if __name__ == '__main__':
    sys.exit(main())
