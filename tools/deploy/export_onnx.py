"""Export an mmvim model to ONNX (standard operators only, unless --scan-op
mmvim) and check it in onnxruntime.

    python tools/deploy/export_onnx.py CONFIG [CHECKPOINT] --shape H W \\
        --out FILE.onnx [--dynamic] [--opset N] [--verify] [--argmax] \\
        [--scan-op loop|mmvim]

I/O contract of a segmentor (every UperNet config):
  input  `inputs`      float32 (N, 3, H, W): the batch after the config's
                       data preprocessor (normalised, padded);
  output `seg_logits`  float32 (N, num_classes, H, W): what
                       EncoderDecoder.encode_decode(inputs, batch_img_metas)
                       returns, the logits at the input size;
  with --argmax also `seg_labels` int64 (N, H, W).
A detector (Mask R-CNN, Cascade Mask R-CNN configs) exports whole, with
its post-processing (test_cfg: NMS, score threshold, max_per_img):
  inputs  `inputs` as above and `img_shape` int64 (N, 2): each image's
          (height, width) inside the padded batch;
  outputs `dets` float32 (N, K, 5): x1, y1, x2, y2, score in input pixels,
          best first; `labels` int64 (N, K), -1 after the last detection;
          `masks` float32 (N, K, 28, 28): each detection's mask
          probabilities on its box (paste and threshold: docs/deploy.md).

Without CHECKPOINT the config's initialisation is used (seeded by --seed;
pretrained backbone files are not read; a detector's classification layers
are drawn wider, so that its scores are distinct). --dynamic makes batch, height and
width dynamic (Vim's position-embedding resize and MambaVision's window
padding are then in the graph); without it the file takes exactly
(1, 3, H, W). --verify runs the file in onnxruntime next to the PyTorch
model on the same random input and prints the worst relative error
(max |onnx - torch| / max |torch|; for a detector: the same detections in
the same order as model.predict, box and score errors, mask IoU); with
--dynamic also at a second, non-square size and batch 2. Exit code 2 for
bad input, 1 when the error is above --tolerance.

--scan-op: 'loop' (default) writes each selective scan as a Loop of
standard ONNX operators, a file any ONNX runtime runs; 'mmvim' writes it as
one mmvim.ai::SelectiveScan node, mmvim's compiled C++ scan, which runs
only in onnxruntime with mmvim's custom-op library (mmvim/libmmvim_ort_ops.so,
built by `make install`; mmvim.deploy.onnx_session and the tools register
it) and is several times faster there. Details: docs/deploy.md.
"""
import argparse
import os.path as osp
import sys


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file or mmvim::configs/... '
                        'name')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='trained model (mmvim or official dense '
                        'release); default: the config\'s initialisation')
    parser.add_argument('--shape', type=int, nargs=2, required=True,
                        metavar=('H', 'W'), help='input height and width '
                        '(the example size with --dynamic)')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width')
    parser.add_argument('--opset', type=int, default=None,
                        help='ONNX opset (default: the exporter\'s, 18+)')
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch and print '
                        'the worst relative error')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='--verify fails (exit 1) above this worst '
                        'relative error (default 1e-4)')
    parser.add_argument('--scan-op', choices=['loop', 'mmvim'],
                        default='loop',
                        help='loop (default): standard ONNX operators, any '
                        'runtime; mmvim: mmvim\'s compiled scan as the '
                        'custom operator mmvim.ai::SelectiveScan (onnxruntime '
                        'with mmvim\'s custom-op library; faster)')
    parser.add_argument('--argmax', action='store_true',
                        help='segmentors: also output the labels')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the initialisation without CHECKPOINT '
                        'and of the --verify inputs')
    parser.add_argument('--cfg-options', nargs='+', default=None,
                        metavar='KEY=VALUE', help='override config settings')
    from mmvim.checkpoint import add_trust_flag
    add_trust_flag(parser)
    return parser.parse_args()


def _second_shape(h: int, w: int):
    """A second size for checking a dynamic export: not square, not the
    export size, multiples of 32 around 3/4 and 5/4 of it."""
    return max(64, (h * 3 // 4) // 32 * 32), max(64, (w * 5 // 4) // 32 * 32)


def _verify_detector(model, session, checks, gen, tolerance: float) -> int:
    """Detections of the file against model.predict on random inputs (a
    batch of 2 has a smaller second image: clamping to img_shape)."""
    import torch

    from mmvim.deploy.onnx_detector import same_detections, verify_detector
    failed, found = False, 0
    for n, ch, cw in checks:
        inputs = torch.randn(n, 3, ch, cw, generator=gen)
        shapes = torch.tensor([[ch, cw]] + [[ch - ch // 8, cw - cw // 4]] *
                              (n - 1))
        for i, st in enumerate(verify_detector(model, session, inputs,
                                               shapes, tolerance)):
            found += st['ref']
            ok = same_detections(st, tolerance)
            failed |= not ok
            print(f'verify {n}x3x{ch}x{cw} image {i} ({shapes[i, 0]}x'
                  f'{shapes[i, 1]}): {st["ref"]} detections in PyTorch, '
                  f'{st["out"]} in onnxruntime, {st["paired"]} the same in '
                  f'order; worst relative error boxes {st["box_error"]:.1e}'
                  f', scores {st["score_error"]:.1e}; lowest mask IoU '
                  f'{st["mask_iou"]:.4f}{"" if ok else " FAILED"}')
    if found == 0:
        print('note: no detections above the score threshold on the random '
              'inputs, so only empty outputs were compared')
    if failed:
        print(f'error: onnxruntime\'s detections differ from PyTorch\'s '
              f'(relative tolerance {tolerance:.0e}, mask IoU 0.99)',
              file=sys.stderr)
        return 1
    return 0


def main() -> int:
    args = parse_args()
    from mmengine.config import DictAction

    from mmvim.checkpoint import CheckpointMismatchError, apply_trust_flag
    from mmvim.utils import MMVimConfigError
    apply_trust_flag(args)
    if args.cfg_options:
        namespace = argparse.Namespace()
        DictAction(option_strings=[], dest='cfg_options')(
            None, namespace, args.cfg_options)
        args.cfg_options = namespace.cfg_options
    try:
        from mmvim.deploy.export import require_deploy
        require_deploy()
    except ImportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    import torch

    from mmvim.deploy.export import (
        ExportError,
        export_onnx,
        graph_module,
        load_model,
        onnx_session,
        verify,
    )
    from mmvim.deploy.ort_ops import CustomOpLibraryError
    h, w = args.shape
    if min(h, w) < 32:
        print(f'error: --shape {h} {w}: height and width must be at least '
              '32', file=sys.stderr)
        return 2
    if not args.out.endswith('.onnx'):
        print(f'error: --out {args.out}: name the file *.onnx',
              file=sys.stderr)
        return 2
    try:
        if args.checkpoint is not None and not osp.isfile(args.checkpoint):
            raise MMVimConfigError(
                f'checkpoint {args.checkpoint!r} does not exist')
        cfg, model = load_model(args.config, args.checkpoint, args.seed,
                                args.cfg_options)
        module = graph_module(cfg, model, args.argmax)
    except (MMVimConfigError, CheckpointMismatchError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(args.seed)
    example = torch.randn(1, 3, h, w, generator=gen)
    detector = cfg.default_scope == 'mmdet'
    if detector and args.checkpoint is None:
        from mmvim.deploy.det_graph import distinct_scores
        distinct_scores(model, example, seed=args.seed)
        print('no checkpoint: the classification layers (rpn_cls, fc_cls, '
              'conv_logits) are drawn wider than mmdet\'s initialisation, '
              'so that the random model\'s scores are distinct '
              '(docs/deploy.md)')
    names = module.output_names()
    what = 'detector (boxes, labels, masks)' if detector else \
        'segmentor (encode_decode)'
    print(f'exporting the {what} of {osp.basename(args.config)} at '
          f'{h}x{w}{" (dynamic batch, height, width)" if args.dynamic else ""}'
          f' -> {args.out}', flush=True)
    try:
        info = export_onnx(module, module.example_inputs(example), args.out,
                           args.dynamic, args.opset, names,
                           module.input_names(), scan_op=args.scan_op)
    except ExportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    custom = (f'; custom operators of {", ".join(info["custom_domains"])} '
              '(needs mmvim\'s onnxruntime custom-op library)'
              if info['custom_domains'] else '')
    print(f'wrote {args.out}: {info["bytes"] / 2**20:.1f} MB, opset '
          f'{info["opset"]}, {info["nodes"]} nodes ({info["top_level_nodes"]}'
          f' outside Loop bodies), outputs {", ".join(names)}; export '
          f'{info["seconds"]:.1f} s{custom}')
    if not args.verify:
        return 0
    try:
        session = onnx_session(args.out)
    except CustomOpLibraryError as err:
        print(f'error: --verify: {err}', file=sys.stderr)
        return 2
    checks = [(1, h, w)]
    if args.dynamic:
        checks.append((2, ) + _second_shape(h, w))
    if detector:
        return _verify_detector(model, session, checks, gen, args.tolerance)
    worst = 0.0
    for n, ch, cw in checks:
        inputs = torch.randn(n, 3, ch, cw, generator=gen)
        err = verify(module, session, inputs)
        worst = max(worst, err)
        print(f'verify {n}x3x{ch}x{cw}: worst relative error {err:.2e} '
              '(onnxruntime vs PyTorch fp32)')
    if worst > args.tolerance:
        print(f'error: worst relative error {worst:.2e} is above '
              f'--tolerance {args.tolerance:.0e}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
