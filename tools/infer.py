"""Run a trained model on images and save overlays, via mmseg's / mmdet's
inferencers.

    python tools/infer.py CONFIG CHECKPOINT INPUT [--out-dir DIR] [--device cpu]
    python tools/infer.py CONFIG FILE.onnx INPUT --backend onnxruntime

CONFIG is a config file (from any folder) or an mmvim config name such as
``mmvim::configs/upernet_vim_ti_ade20k.py``; CHECKPOINT is mmvim's own or an
official dense release (converted on load; every key must fit). INPUT is an
image file or a folder of images (the image files directly in it; other
files are skipped and named). Overlays are written to ``DIR/vis/`` under
the input names and raw predictions under ``DIR`` (``pred/``: label maps
numbered in input order, for segmentation; ``preds/<name>.json`` for
detection). The class names are the checkpoint's (``dataset_meta`` of the
training run), else the config's test dataset's; the tool prints which.
The config's ``default_scope`` picks MMSegInferencer (segmentation) or
DetInferencer (detection / instance segmentation), through
:func:`mmvim.apis.build_inferencer`. ``--backend onnxruntime`` runs a
segmentor or detector exported with tools/deploy/export_onnx.py (CHECKPOINT
is then the .onnx file) in the same pipeline (docs/deploy.md).
"""
import argparse
import os.path as osp
import sys


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('input', help='an image file or a folder of images')
    parser.add_argument('--out-dir', default='work_dirs/infer')
    parser.add_argument('--device', default=None,
                        help="e.g. 'cpu' or 'cuda:0' (default: cuda if "
                        'available)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: hide boxes below this score')
    parser.add_argument('--backend', choices=['pytorch', 'onnxruntime'],
                        default='pytorch', help='onnxruntime: CHECKPOINT is '
                        'a segmentor or detector exported to .onnx')
    from mmvim.checkpoint import (
        CheckpointMismatchError,
        add_trust_flag,
        apply_trust_flag,
    )
    add_trust_flag(parser)
    args = parser.parse_args()
    apply_trust_flag(args)
    from mmvim.utils import MMVimConfigError, load_config
    try:
        cfg = load_config(args.config)
        if not osp.exists(args.checkpoint):
            raise MMVimConfigError(
                f'checkpoint {args.checkpoint!r} does not exist')
        from mmvim.apis import InferenceInputError, list_image_inputs
        try:
            # the inputs first: a wrong path fails before the model is built
            images, skipped = list_image_inputs(args.input)
        except InferenceInputError as err:
            raise MMVimConfigError(str(err)) from None
        weights = args.checkpoint
        if args.backend == 'onnxruntime':  # docs/deploy.md
            from mmvim.deploy import onnx_model_config
            onnx_model_config(cfg, args.checkpoint)
            weights = None
        from mmvim.apis import build_inferencer
        inferencer = build_inferencer(cfg, weights, device=args.device)
    except (MMVimConfigError, CheckpointMismatchError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if skipped:
        names = ', '.join(osp.basename(f) for f in skipped[:5])
        more = ', ...' if len(skipped) > 5 else ''
        print(f'skipped {len(skipped)} files of {args.input} that are not '
              f'images: {names}{more}')
    classes = inferencer.model.dataset_meta['classes']
    print(f'classes (from the {inferencer.classes_from}): '
          f'{", ".join(map(str, classes))}')
    if cfg.default_scope == 'mmseg':
        inferencer(images, out_dir=args.out_dir, show=False)
    else:
        inferencer.show_progress = False
        inferencer(images, out_dir=args.out_dir, no_save_pred=False,
                   pred_score_thr=args.score_thr)
    print(f'{len(images)} overlays written to '
          f'{osp.join(args.out_dir, "vis")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
