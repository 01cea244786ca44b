"""Phase 5, throughput against the official numbers: VMamba-T and
MambaVision-T backbones at 224, batch 128, as their repositories measure
(VMamba in float32, MambaVision under float16 autocast), against 1686 and
6298 images/s (one A100, with the classification head; mmvim's presets
are the dense backbones: four feature maps, no head). The ratio compares
different GPUs when this is not an A100: read it as a sanity check, not a
speed claim."""
from __future__ import annotations

from .capture import build_backbone

OFFICIAL = {  # img/s at 224, batch 128, one A100
    'vmamba_t': dict(images_per_s=1686, amp=False),
    'mambavision_t': dict(images_per_s=6298, amp=True),
}


def run(args, phase) -> None:
    import contextlib

    import torch

    from mmvim.utils.bench import measure
    size, batch = (32, 2) if args.tiny else (224, 128)
    for name, ref in OFFICIAL.items():
        torch.manual_seed(0)
        model = build_backbone(name, size, args.tiny).to(args.device).eval()
        x = torch.randn(batch, 3, size, size, device=args.device)
        half = torch.float16 if args.device.startswith('cuda') \
            else torch.bfloat16  # CPU autocast: bfloat16

        def call(model=model, x=x, use_amp=ref['amp'], half=half):
            amp = torch.autocast(args.device.split(':')[0], dtype=half) \
                if use_amp else contextlib.nullcontext()
            with torch.no_grad(), amp:
                model(x)
        res = measure(call, args.repeats, args.device)
        row = dict(model=name, img_size=size, batch_size=batch,
                   amp=ref['amp'], official=ref,
                   images_per_s=batch / res['median_s'],
                   peak_extra_mb=res['peak_extra_mb'])
        row['ratio_to_official'] = row['images_per_s'] / ref['images_per_s']
        row['status'] = 'ok'
        phase.add(row, f'{name}: {row["images_per_s"]:.0f} img/s '
                  f'({row["ratio_to_official"]:.2f}x official)')
