"""Train a segmentor (mmseg config) or detector (mmdet config).

    python tools/train.py configs/upernet_vim_s_ade20k.py
    python tools/train.py CONFIG --work-dir work_dirs/x --amp --resume
    bash tools/dist_train.sh CONFIG 8            # torchrun, 8 GPUs

The config's ``default_scope`` (mmseg or mmdet) decides which toolbox runs it.
"""
import argparse
import os.path as osp
import sys

from mmengine.logging import print_log

# importing mmvim (through mmvim.utils) registers the mmvim modules
from mmvim.checkpoint import CheckpointMismatchError, checkpoint_file_problem
from mmvim.utils import (
    MMVimConfigError,
    add_runner_args,
    apply_runner_args,
    build_runner,
    check_dataset_paths,
    check_pretrained_paths,
    finish_distributed,
    load_config,
)

EXAMPLE = 'train_dataloader.batch_size=4 model.backbone.depth=12'


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model with mmvim')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where to save logs and models '
                        '(default: work_dirs/<config name>)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from this checkpoint; with no value, resume from the '
        'latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision training (CUDA)')
    add_runner_args(parser, EXAMPLE)
    return parser.parse_args()


def main():
    args = parse_args()
    try:
        cfg = load_config(args.config, args.cfg_options)
        apply_runner_args(cfg, args)
        wrapper = cfg.get('optim_wrapper', {}).get('type', 'OptimWrapper')
        if args.amp:
            if wrapper == 'AmpOptimWrapper':
                print_log('AMP is already enabled in the config.',
                          logger='current')
            elif wrapper != 'OptimWrapper':
                raise MMVimConfigError(
                    f'--amp needs optim_wrapper.type OptimWrapper, the '
                    f'config uses {wrapper}.')
            else:
                wrapper = cfg.optim_wrapper.type = 'AmpOptimWrapper'
                cfg.optim_wrapper.loss_scale = 'dynamic'
        if wrapper == 'AmpOptimWrapper':
            import torch
            if not torch.cuda.is_available():
                raise MMVimConfigError(
                    'AMP (--amp or optim_wrapper.type=AmpOptimWrapper) needs '
                    'a CUDA device: mmengine\'s AmpOptimWrapper asserts '
                    'CUDA and scales fp16 losses with a CUDA GradScaler. On '
                    'CPU, train in fp32: drop --amp.')
        if args.resume == 'auto':
            cfg.resume = True
            cfg.load_from = None
        elif args.resume is not None:
            if not osp.isfile(args.resume):
                raise MMVimConfigError(
                    f'--resume {args.resume!r}: no such checkpoint file; '
                    'use --resume without a value to continue from the '
                    'latest checkpoint in the work dir.')
            problem = checkpoint_file_problem(args.resume)
            if problem:
                raise MMVimConfigError(f'--resume {args.resume} {problem}.')
            cfg.resume = True
            cfg.load_from = args.resume
        check_dataset_paths(cfg, ('train_dataloader', 'val_dataloader'))
        check_pretrained_paths(cfg)
    except MMVimConfigError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)

    runner = build_runner(cfg)
    try:
        runner.train()
    except CheckpointMismatchError as err:  # load_from / --resume file
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    finish_distributed()


if __name__ == '__main__':
    main()
