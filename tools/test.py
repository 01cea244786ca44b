"""Evaluate a checkpoint on a config's test set and print the metric.

    python tools/test.py configs/upernet_vim_s_ade20k.py CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir vis/   # save overlays
    python tools/test.py CONFIG CHECKPOINT --tta    # multi-scale + flip
    python tools/test.py CONFIG FILE.onnx   # an exported segmentor or
                                            # detector, run by onnxruntime
                                            # (docs/deploy.md)
    python tools/test.py configs/upernet_vmamba_t_ade20k.py \
        upernet_vssm_4xb4-160k_ade20k-512x512_tiny_s_iter_160000.pth
    bash tools/dist_test.sh CONFIG CHECKPOINT 8

CHECKPOINT is a trained segmentor / detector: mmvim's own, or an official
dense release (VMamba UperNet / Mask R-CNN, MambaVision UperNet / Cascade
Mask R-CNN, see docs/model_zoo.md) whose backbone part is converted on load.
Loading is strict: a file of another backbone family or size, other heads or
another number of classes stops the run with the keys named (exit 2).

Prints the dataset metric (mIoU for segmentation, bbox/segm AP for
detection) as the toolbox computes it, then a one-line summary.
"""
import argparse
import json
import numbers
import os
import os.path as osp
import sys

# importing mmvim (through mmvim.utils) registers the mmvim modules
from mmvim.checkpoint import CheckpointMismatchError, checkpoint_file_problem
from mmvim.utils import (
    MMVimConfigError,
    add_runner_args,
    apply_runner_args,
    build_runner,
    check_dataset_paths,
    finish_distributed,
    load_config,
)

EXAMPLE = 'test_dataloader.dataset.data_root=/data/ade'


def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a model with mmvim')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file, or a '
                        'segmentor / detector exported to .onnx '
                        '(docs/deploy.md)')
    parser.add_argument('--work-dir', help='where to save the evaluation '
                        'log and metrics (default: work_dirs/<config>)')
    parser.add_argument('--show-dir', help='save prediction overlays (next '
                        'to the ground truth) under this directory')
    parser.add_argument('--out', help='also write the metrics as JSON here')
    parser.add_argument('--tta', action='store_true', help='multi-scale + '
                        'flip test (the config\'s tta_pipeline; the "MS" '
                        'mIoU of the papers)')
    add_runner_args(parser, EXAMPLE)
    return parser.parse_args()


def enable_visualization(cfg, show_dir):
    """Draw predictions next to the ground truth and save them as PNG."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show-dir needs a VisualizationHook in '
                           'default_hooks (the mmseg/mmdet bases have one).')
    hooks.visualization.draw = True
    hooks.visualization.interval = 1
    if cfg.default_scope == 'mmdet':
        # mmdet joins a relative path onto the run's timestamped log dir;
        # an absolute one lands where the user asked
        hooks.visualization.test_out_dir = osp.abspath(show_dir)
    else:
        # mmseg's hook writes through the visualizer's backends
        cfg.visualizer.save_dir = show_dir


def enable_tta(cfg, config):
    """Wrap the model in the config's TTA model and test with its
    tta_pipeline (mmseg's ADE20K bases: ratios 0.5-1.75 and flips)."""
    if not cfg.get('tta_model') or not cfg.get('tta_pipeline'):
        raise MMVimConfigError(
            f'--tta: {config} defines no tta_model / tta_pipeline (mmseg\'s '
            'dataset bases do, e.g. _base_/datasets/ade20k.py); add both to '
            'the config to test with augmentations.')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def main():
    args = parse_args()
    try:
        cfg = load_config(args.config, args.cfg_options)
        if not osp.isfile(args.checkpoint):
            raise MMVimConfigError(
                f'checkpoint {args.checkpoint!r} does not exist.')
        if args.checkpoint.endswith('.onnx'):  # an exported model, run by
            # onnxruntime in mmseg's / mmdet's pipeline (docs/deploy.md)
            from mmvim.deploy import onnx_model_config
            onnx_model_config(cfg, args.checkpoint)
        else:
            problem = checkpoint_file_problem(args.checkpoint)
            if problem:
                raise MMVimConfigError(
                    f'checkpoint {args.checkpoint} {problem}.')
            cfg.load_from = args.checkpoint
        apply_runner_args(cfg, args)
        if args.tta:
            enable_tta(cfg, args.config)
        check_dataset_paths(cfg, ('test_dataloader', ))
    except MMVimConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)

    runner = build_runner(cfg, strict_load=True)
    try:
        metrics = runner.test()
    except CheckpointMismatchError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    from mmengine.dist import is_main_process
    main_process = is_main_process()
    finish_distributed()
    if not main_process:
        return  # every process holds the gathered metrics; rank 0 reports
    summary = ', '.join(f'{k}: {v:.2f}' if isinstance(v, numbers.Real) else
                        f'{k}: {v}' for k, v in metrics.items())
    print(f'Test metrics ({osp.basename(args.config)}): {summary}')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump({k: (float(v) if isinstance(v, numbers.Real) else
                           str(v)) for k, v in metrics.items()}, f, indent=2)


if __name__ == '__main__':
    main()
