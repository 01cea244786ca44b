"""Parameters and FLOPs of a backbone preset or a config's model.

    python tools/get_flops.py vmamba_t                    # 224x224 backbone
    python tools/get_flops.py vmamba_t --classifier 1000  # + ImageNet head
    python tools/get_flops.py configs/upernet_vmamba_t_ade20k.py --shape 512 2048

FLOPs follow fvcore / mmengine (one multiply-add = one FLOP; element-wise
ops not counted) with the selective scan counted as 9*B*L*D*N (+B*D*L for
the D skip), as the official VMamba analysis (mmvim.utils.flops). For an
mmseg config the whole EncoderDecoder forward is counted; for an mmdet
config, backbone + neck (the RoI heads depend on the proposals).
"""
import argparse
import os
import sys


def build(target: str):
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    import mmvim.models as models
    if not target.endswith('.py'):
        from tools.benchmark import MODELS
        if target not in MODELS:
            raise SystemExit(f'error: unknown preset {target!r}; choose one '
                             f'of {sorted(MODELS)} or pass a config file')
        cls_name, kwargs = MODELS[target]
        model = getattr(models, cls_name)(**kwargs)
        return model, model.forward, model
    from mmvim.utils import load_config
    cfg = load_config(target)
    scope = cfg.get('default_scope', 'mmseg')
    __import__(f'{scope}.utils', fromlist=['x']).register_all_modules()
    registry = __import__(f'{scope}.registry', fromlist=['x']).MODELS
    cfg.model.backbone.init_cfg = None
    model = registry.build(cfg.model)
    fn = model._forward if scope == 'mmseg' else model.extract_feat
    return model, fn, model.backbone


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', help='backbone preset (tools/benchmark.py '
                        'MODELS) or a config file')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'))
    parser.add_argument('--classifier', type=int, default=0,
                        help='add an ImageNet-style head with this many '
                        'classes (norm + pool + linear) to a backbone')
    args = parser.parse_args()
    import torch

    from mmvim.utils.flops import count_flops
    model, fn, backbone = build(args.target)
    model.eval()

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return fn(x)

    x = torch.randn(1, 3, *args.shape)
    with torch.no_grad():
        flops, by_op = count_flops(Forward(), (x, ))
    params = sum(p.numel() for p in model.parameters())
    if args.classifier:
        dim = backbone.dims[-1] if hasattr(backbone, 'dims') else \
            backbone.embed_dims
        flops += dim * args.classifier
        params += dim * args.classifier + args.classifier
    print(f'{args.target} at {args.shape[0]}x{args.shape[1]}: '
          f'{params / 1e6:.2f} M params, {flops / 1e9:.4f} GFLOPs')
    for op, value in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f'  {op:<32}{value / 1e9:10.4f} G')
    return 0


if __name__ == '__main__':
    sys.exit(main())
