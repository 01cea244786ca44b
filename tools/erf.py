"""Effective receptive field (ERF) of a backbone output, saved as a heat map.

    python tools/erf.py vmamba_t --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth
    python tools/erf.py configs/upernet_vmamba_t_ade20k.py --num-images 50
    python tools/erf.py configs/demo_upernet_vim_shapes.py --size 128 \\
        --checkpoint work_dirs/demo_vim/iter_800.pth

The target is a backbone preset (mmvim.utils.presets: vim_t, vmamba_t,
mambavision_t, ... and the baselines deit_t, deit_s, swin_t) or a config
file (its ``model.backbone``). For each image: the gradient of relu(output
``--out-index``) at the output's centre w.r.t. the input, relu'd and summed
over channels; the mean over the images is saved as a PNG heat map
(log10(x + 1) rescaled to [0, 1] as RepLKNet, or x ** 0.25 as VMamba's code
with --scale root) and as a .npy of the raw map next to it, and RepLKNet's
high-contribution area ratios are printed (see mmvim/utils/erf.py and
docs/erf.md).

Weights: ``--checkpoint`` (a whole segmentor/detector checkpoint, whose
``backbone.*`` keys are used, a backbone checkpoint, or an official release,
converted as ``init_cfg`` would), else the config's backbone ``init_cfg``
file when it is on disk (a URL counts when it is in the torch hub cache),
else random weights, with a warning. Images: the config's test images
(``--data-root`` overrides its data_root; for a preset, ``--data-root`` is a
folder of images), else the demo scenes (tools/make_demo_data.py), else
noise, each with a message saying so.
"""
import argparse
import glob
import os.path as osp
import sys
import time
from typing import List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_IMAGES = osp.join(ROOT, 'data', 'demo_shapes', 'images', 'validation')
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')
# ImageNet statistics in 0-255 RGB, as the mmseg/mmdet configs
SCALES = ('log', 'root', 'raw')  # mmvim.utils.erf.SCALES (imported late)
IMAGENET = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                bgr_to_rgb=True)


class ERFError(RuntimeError):
    """A user error: printed as one line, exit code 2."""


def warn(message: str) -> None:
    print(f'warning: {message}', file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- backbone
def build_backbone(target: str, size: int):
    """(backbone, config or None, the backbone's init_cfg or None)."""
    sys.path.insert(0, ROOT)
    if not target.endswith('.py'):
        from mmvim.utils.presets import PRESETS, build_preset
        if target not in PRESETS:
            raise ERFError(f'unknown preset {target!r}; choose one of '
                           f'{sorted(PRESETS)} or pass a config file')
        # plain models (Vim, DeiT) get the position-embedding grid of the
        # run size: a checkpoint is resized to it once, on load
        return build_preset(target, img_size=size), None, None
    from mmvim.utils import MMVimConfigError, load_config, model_registry
    try:
        cfg = load_config(target)
    except MMVimConfigError as err:
        raise ERFError(str(err)) from None
    backbone_cfg = cfg.model.backbone.copy()
    init_cfg = backbone_cfg.pop('init_cfg', None)
    if not init_cfg and cfg.model.get('pretrained'):
        # mmseg's EncoderDecoder turns model.pretrained into this
        init_cfg = dict(type='Pretrained', checkpoint=cfg.model.pretrained)
    backbone_cfg.init_cfg = None  # loaded below, where we can say what
    return model_registry(cfg).build(backbone_cfg), cfg, init_cfg


def choose_weights(checkpoint: Optional[str], init_cfg
                   ) -> Tuple[Optional[str], dict]:
    """The file to load (None: random init) and loader options; a given
    ``checkpoint`` was checked to exist by :func:`main`."""
    if checkpoint:
        return checkpoint, {}
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained' \
            and init_cfg.get('checkpoint'):
        path = str(init_cfg['checkpoint'])
        opts = dict(prefix=init_cfg.get('prefix'),
                    strict=init_cfg.get('strict', True))
        if '://' in path:
            from mmvim.checkpoint.io import url_cache_path
            local = url_cache_path(path)
            if osp.isfile(local):
                return local, opts
            info(f'the config\'s backbone init_cfg is {path}, which is not '
                 'in the torch hub cache; download it and pass --checkpoint '
                 'FILE to use it.')
        elif osp.isfile(path):
            return path, opts
        else:
            info(f'the config\'s backbone init_cfg file {path!r} does not '
                 'exist.')
    return None, {}


def load_weights(backbone, path: str, prefix: Optional[str] = None,
                 strict: bool = True) -> None:
    """Load ``path`` into ``backbone``: a whole-model checkpoint (its
    ``backbone.*`` keys), a backbone checkpoint or an official release (for
    mmvim backbones, converted as their ``init_cfg`` loading does)."""
    from mmvim.checkpoint import CheckpointFileError, CheckpointMismatchError
    loader = getattr(type(backbone), 'pretrained_loader', None)
    try:
        if loader is not None:
            loader(backbone, path, prefix=prefix, strict=strict)
            return
        from mmengine.runner import CheckpointLoader

        from mmvim.checkpoint import extract_state_dict
        sd, _ = extract_state_dict(
            CheckpointLoader.load_checkpoint(path, map_location='cpu'))
        prefix = prefix or ('backbone.' if any(
            k.startswith('backbone.') for k in sd) else '')
        if prefix:
            sd = {k[len(prefix):]: v for k, v in sd.items()
                  if k.startswith(prefix)}
        backbone.load_state_dict(sd, strict=strict)
    except CheckpointFileError as err:  # unreadable or refused file
        raise ERFError(str(err)) from None
    except (CheckpointMismatchError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ERFError(f'checkpoint {path!r} does not fit the backbone '
                       f'{type(backbone).__name__}: {first}') from None


# ------------------------------------------------------------------ images
def list_images(folder: str) -> List[str]:
    files = [p for p in glob.glob(osp.join(folder, '**', '*'),
                                  recursive=True)
             if p.lower().endswith(IMAGE_EXTS) and osp.isfile(p)]
    return sorted(files)


def dataset_folder(cfg, data_root: Optional[str]) -> Optional[str]:
    """The image folder of the config's test dataset (``data_root`` +
    ``data_prefix.img_path`` / ``.img``), data_root replaced if given."""
    node = cfg.get('test_dataloader', {}).get('dataset') if cfg else None
    while isinstance(node, dict) and ('dataset' in node or
                                      'datasets' in node):
        node = node['dataset'] if 'dataset' in node else node['datasets'][0]
    if not isinstance(node, dict):
        return data_root
    root = data_root or node.get('data_root') or ''
    prefix = node.get('data_prefix') or {}
    sub = prefix.get('img_path') or prefix.get('img') or ''
    return osp.join(root, sub) if sub else (root or None)


def spread(files: List[str], num: int) -> List[str]:
    """``num`` of the sorted ``files``, evenly spaced (not the first ones:
    a class-per-folder layout such as ImageNet's would give one class)."""
    if len(files) <= num:
        return files
    return [files[i * len(files) // num] for i in range(num)]


def pick_images(cfg, data_root: Optional[str], num: int
                ) -> Tuple[List[str], str]:
    """Image files and a description of where they come from (a given
    ``data_root`` was checked to exist by :func:`main`)."""
    folder = dataset_folder(cfg, data_root)
    candidates = [folder] if folder else []
    if data_root:
        candidates.append(data_root)  # a plain folder of images
    for cand in candidates:
        if cand and osp.isdir(cand):
            files = list_images(cand)
            if files:
                return spread(files, num), cand
    if data_root:
        raise ERFError(f'no image files under --data-root {data_root!r} '
                       f'(looked in {candidates}).')
    if folder:
        info(f'the config\'s test images ({folder}) are not here (pass '
             '--data-root DIR for your copy); using the demo scenes '
             'instead.')
    else:
        info('no dataset given (--data-root DIR for a folder of images); '
             'using the demo scenes.')
    files = list_images(DEMO_IMAGES) if osp.isdir(DEMO_IMAGES) else []
    return spread(files, num), osp.relpath(DEMO_IMAGES, ROOT)


def normalisation(cfg) -> dict:
    pre = (cfg.model.get('data_preprocessor') or {}) if cfg else {}
    if pre.get('mean') is not None and pre.get('std') is not None:
        return dict(mean=list(pre['mean']), std=list(pre['std']),
                    bgr_to_rgb=bool(pre.get('bgr_to_rgb', False)))
    return IMAGENET


def load_images(files: List[str], size: int, norm: dict):
    """(N, 3, size, size) float tensor: the shorter side resized to
    ``size`` (bicubic), centre-cropped and normalised, as VMamba's ERF
    code."""
    import cv2
    import numpy as np
    import torch
    mean = np.array(norm['mean'], np.float32)
    std = np.array(norm['std'], np.float32)
    images = []
    for path in files:
        img = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR
        if img is None:
            raise ERFError(f'cannot read image {path!r}')
        if norm['bgr_to_rgb']:
            img = img[..., ::-1]
        h, w = img.shape[:2]
        rh, rw = max(size, round(h * size / min(h, w))), \
            max(size, round(w * size / min(h, w)))
        img = cv2.resize(np.ascontiguousarray(img), (rw, rh),
                         interpolation=cv2.INTER_CUBIC)
        top, left = (rh - size) // 2, (rw - size) // 2
        img = img[top:top + size, left:left + size].astype(np.float32)
        images.append(torch.from_numpy((img - mean) / std).permute(2, 0, 1))
    return torch.stack(images)


# -------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', help='backbone preset (mmvim.utils.presets, '
                        'e.g. vmamba_t, swin_t) or a config file')
    parser.add_argument('--checkpoint', help='whole-model or backbone '
                        'checkpoint (default: the config\'s init_cfg file if '
                        'present, else random weights)')
    parser.add_argument('--num-images', type=int, default=8)
    parser.add_argument('--size', type=int, default=512,
                        help='images are resized (shorter side) and '
                        'centre-cropped to size x size')
    parser.add_argument('--out-index', type=int, default=-1,
                        help='which backbone output (default: the last)')
    parser.add_argument('--out', default='erf.png',
                        help='PNG path; the raw map goes to the same name '
                        'with .npy')
    parser.add_argument('--data-root', help='dataset root (replaces the '
                        "config's data_root) or a folder of images")
    parser.add_argument('--scale', choices=SCALES, default='log',
                        help='heat-map compression: log10(x+1) (RepLKNet, '
                        'default), root: x**0.25 (VMamba), raw')
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--device', default=None,
                        help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--seed', type=int, default=0,
                        help='for random weights and noise images')
    from mmvim.checkpoint import add_trust_flag, apply_trust_flag
    add_trust_flag(parser)
    args = parser.parse_args(argv)
    apply_trust_flag(args)
    if args.num_images < 1 or args.size < 1 or args.batch_size < 1:
        parser.error('--num-images, --size and --batch-size must be >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    try:
        # the user's own paths first, before building the model
        if args.checkpoint and '://' not in args.checkpoint and \
                not osp.isfile(args.checkpoint):
            raise ERFError(f'checkpoint {args.checkpoint!r} does not exist.')
        if args.data_root and not osp.isdir(args.data_root):
            raise ERFError(f'--data-root {args.data_root!r} does not exist.')
        import torch
        torch.manual_seed(args.seed)
        backbone, cfg, init_cfg = build_backbone(args.target, args.size)
        path, opts = choose_weights(args.checkpoint, init_cfg)
        if path:
            load_weights(backbone, path, **opts)
            weights = osp.basename(path)
            info(f'weights: {path}')
        else:
            weights = 'random init'
            if getattr(type(backbone), 'pretrained_loader', None) is None:
                # mmseg/mmdet backbones (the DeiT/Swin baselines) initialise
                # in init_weights; mmvim's in their constructors
                backbone.init_weights()
            warn('no checkpoint: the backbone has RANDOM weights. The ERF '
                 'of an untrained network is not meaningful (it shows the '
                 'wiring, not what a trained model looks at); pass '
                 '--checkpoint FILE.')
        files, source = pick_images(cfg, args.data_root, args.num_images)
        if files:
            images = load_images(files, args.size, normalisation(cfg))
            info(f'images: {len(files)} from {source}, resized and '
                 f'centre-cropped to {args.size}x{args.size}')
            if len(files) < args.num_images:
                warn(f'only {len(files)} images found (asked for '
                     f'{args.num_images}).')
        else:
            warn('no images found (the demo scenes are made by python '
                 'tools/make_demo_data.py); using Gaussian noise, which says '
                 'little about natural images.')
            gen = torch.Generator().manual_seed(args.seed)
            images = torch.randn(args.num_images, 3, args.size, args.size,
                                 generator=gen)
            source = 'noise'
    except ERFError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2

    from mmvim.utils.erf import (
        DEFAULT_THRESHOLDS,
        area_ratios,
        compute_erf,
        save_erf_png,
    )
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    backbone.to(device)
    try:
        erf = compute_erf(backbone, images, args.out_index,
                          batch_size=args.batch_size, device=device)
    except IndexError as err:
        print(f'error: --out-index: {err}', file=sys.stderr)
        return 2
    name = osp.splitext(osp.basename(args.target))[0]
    title = (f'{name}, output {args.out_index}, {weights}\n'
             f'{images.shape[0]} images ({source}), '
             f'{args.size}x{args.size}')
    png = save_erf_png(erf, args.out, title, scale=args.scale)
    npy = osp.splitext(args.out)[0] + '.npy'
    import numpy as np
    np.save(npy, erf.astype(np.float32))  # float32 is plenty, half the size
    info(f'ERF of {name} output {args.out_index} ({weights}), '
         f'{images.shape[0]} images at {args.size}x{args.size} on {device}, '
         f'{time.time() - start:.1f} s')
    what = dict(log='log10(x+1) map, as RepLKNet', root='x**0.25 map',
                raw='raw map')
    for scale in dict.fromkeys((args.scale, 'raw')):
        ratios = area_ratios(erf, DEFAULT_THRESHOLDS, scale)
        info(f'  high-contribution area ratio ({what[scale]}): ' + '  '.join(
            f'{int(t * 100)}%: {r:.4f}' for t, r in ratios.items()))
    info(f'wrote {png} and {npy}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
