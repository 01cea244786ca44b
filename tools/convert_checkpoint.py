"""Convert an official backbone release file to mmvim's layout.

    python tools/convert_checkpoint.py vim SRC DST [--img-size 512]
        [--patch-size 16] [--stride 16] [--with-cls-token] [--final-norm]
    python tools/convert_checkpoint.py vmamba SRC DST
    python tools/convert_checkpoint.py mambavision SRC DST
    python tools/convert_checkpoint.py vmamba SRC DST --config CONFIG

A whole segmentor / detector file (the official UperNet, Mask R-CNN and
Cascade Mask R-CNN releases: keys ``backbone.*``, ``decode_head.*``, ...) is
converted for ``--config``'s model: the backbone part through the family
converter, the rest unchanged, checked strictly against that model.
``tools/test.py CONFIG SRC`` does the same on load, so this is only needed
to ship converted files.

Prints what happened to every key (renamed, transformed, dropped and why).
``init_cfg=dict(type='Pretrained', checkpoint=SRC)`` converts on load, so
this is only needed to ship or inspect converted files. From Python:
``mmvim.checkpoint.convert_<family>_file(src, dst, ...)`` or
``convert_<family>`` on a state dict.
"""
import argparse
import sys


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('family', choices=['vim', 'vmamba', 'mambavision'],
                        help='backbone family of the source file')
    parser.add_argument('src', help='official checkpoint (path or URL)')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--img-size', type=int, nargs='+', default=[224],
                        help='Vim: training size of the target model (H [W])')
    parser.add_argument('--patch-size', type=int, default=16)
    parser.add_argument('--stride', type=int, default=None)
    parser.add_argument('--with-cls-token', action='store_true',
                        help='keep the class token (dense models drop it)')
    parser.add_argument('--final-norm', action='store_true',
                        help='keep norm_f (Vim(final_norm=True))')
    parser.add_argument('--config', help='a whole segmentor/detector file: '
                        'the config whose model it is converted for')
    from mmvim.checkpoint import add_trust_flag, apply_trust_flag
    add_trust_flag(parser)
    args = parser.parse_args()
    apply_trust_flag(args)
    if args.config:
        return convert_whole_model(args)
    from mmvim.checkpoint import (
        CheckpointMismatchError,
        convert_mambavision_file,
        convert_vim_file,
        convert_vmamba_file,
    )
    size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size
    try:
        if args.family == 'vim':
            report = convert_vim_file(args.src, args.dst, tuple(size[:2]),
                                      args.patch_size, args.stride,
                                      args.with_cls_token, args.final_norm)
        elif args.family == 'vmamba':
            report = convert_vmamba_file(args.src, args.dst)
        else:
            report = convert_mambavision_file(args.src, args.dst)
    except (CheckpointMismatchError, FileNotFoundError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(report.summary())
    print(f'wrote {args.dst}')
    return 0


def convert_whole_model(args) -> int:
    """SRC is a whole-model file; convert it for --config's model."""
    from mmvim.checkpoint import CheckpointMismatchError
    from mmvim.checkpoint.dense import convert_model_file
    from mmvim.utils import MMVimConfigError, build_model, load_config
    try:
        cfg = load_config(args.config)
        model = build_model(cfg)
        family = getattr(model.backbone, 'family', '').lower()
        if family != args.family:
            raise MMVimConfigError(
                f'{args.config} builds a {model.backbone.family or "non-mmvim"}'
                f' backbone, not {args.family}')
        report = convert_model_file(args.src, args.dst, model)
    except (CheckpointMismatchError, FileNotFoundError,
            MMVimConfigError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(report.summary())
    print(f'wrote {args.dst} (the whole model of {args.config})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
