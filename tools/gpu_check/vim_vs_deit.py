"""Phase 4, Vim-Ti against DeiT-Ti: feature extraction (four maps, no
gradient, float32) at 512, 1024 and 1248, images per second and peak
memory; at 1248 the FPS ratio and the memory saving against the Vim
paper's 2.8x and 86.8%.

DeiT-Ti is timm's (``deit_tiny_patch16_224`` at the image size, the
features of blocks 3/6/9/12), with attention as an explicit softmax(QK^T)V
as in the timm 0.4.12 of the paper's DeiT code (``deit_t``) and with
PyTorch's fused attention (``deit_t_sdpa``, memory linear in the tokens).
Without timm (the CPU dry run in the project's environment) mmseg's ViT
preset stands in for both and the rows say so."""
from __future__ import annotations

from .capture import build_backbone

VIM_PAPER = dict(size=1248, fps_ratio=2.8, memory_saving=0.868)
SIZES = (512, 1024, 1248)


def deit(size: int, fused: bool):
    """(DeiT-Ti feature extractor, implementation name)."""
    try:
        import timm
    except ImportError:
        from mmvim.utils.presets import build_preset
        return build_preset('deit_t', img_size=size), 'mmseg ViT'
    import torch.nn as nn

    class Features(nn.Module):
        """timm's ViT, returning the maps of blocks 3, 6, 9 and 12."""

        def __init__(self) -> None:
            super().__init__()
            self.vit = timm.create_model('deit_tiny_patch16_224',
                                         pretrained=False, img_size=size,
                                         num_classes=0)
            for blk in self.vit.blocks:
                blk.attn.fused_attn = fused

        def forward(self, x):
            return self.vit.forward_intermediates(
                x, indices=[2, 5, 8, 11], intermediates_only=True)
    return Features(), f'timm {timm.__version__}' + (' sdpa' if fused
                                                     else '')


def measure_model(name: str, size: int, batch: int, device: str,
                  repeats: int, tiny: bool = False) -> dict:
    import torch

    from mmvim.utils.bench import measure
    torch.manual_seed(0)
    if name == 'vim_t':
        model, impl = build_backbone('vim_t', size, tiny), 'mmvim'
    else:
        model, impl = deit(size, fused=name == 'deit_t_sdpa')
    model = model.to(device)
    model.eval()  # mmseg's ViT.train() returns None: no chaining
    x = torch.randn(batch, 3, size, size, device=device)

    def call():
        with torch.no_grad():
            model(x)
    res = measure(call, repeats, device)
    return dict(impl=impl, images_per_s=batch / res['median_s'],
                median_s=res['median_s'], peak_extra_mb=res['peak_extra_mb'])


def run(args, phase) -> None:
    sizes = (64,) if args.tiny else SIZES
    batch = 1 if args.tiny else args.vim_batch
    repeats = args.repeats
    for size in sizes:
        for name in ('vim_t', 'deit_t', 'deit_t_sdpa'):
            row = dict(model=name, img_size=size, batch_size=batch,
                       **measure_model(name, size, batch, args.device,
                                       repeats, args.tiny))
            row['status'] = 'ok'
            if args.device.startswith('cuda'):
                import torch
                torch.cuda.empty_cache()
            phase.add(row, f'{name}@{size}: {row["images_per_s"]:.1f} img/s,'
                      f' {row["peak_extra_mb"]:.0f} MB')
    top = max(sizes)
    by = {r['model']: r for r in phase.rows if r['img_size'] == top}
    vim, base = by['vim_t'], by['deit_t']
    phase.result.update(paper=VIM_PAPER, compared_at=top,
                        fps_ratio=vim['images_per_s'] / base['images_per_s'])
    if base['peak_extra_mb'] > 0:
        phase.result['memory_saving'] = \
            1 - vim['peak_extra_mb'] / base['peak_extra_mb']
