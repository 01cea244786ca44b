"""Time opening a training checkpoint: mmvim's loader against torch's.

    python tools/benchmark_checkpoint_load.py [--config CONFIG] [--repeat 5]
        [--json docs/benchmarks/checkpoint_load_cpu.json]

Writes (once, into a temporary folder) the checkpoint ``tools/train.py``
would write for CONFIG's model (default: Vim-S UperNet): weights, AdamW
state after one step, schedulers' state, mmengine's message hub (history
buffers, numpy values) and meta; then times, best of ``--repeat``:

- ``mmvim``: :func:`mmvim.checkpoint.load_checkpoint_file` (what every
  mmvim tool uses);
- ``torch_full``: ``torch.load(weights_only=False)`` (a full unpickle,
  which can run code);
- ``file_bytes``: the checkpoint's size.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='configs/upernet_vim_s_ade20k.py')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--json', help='write the numbers here')
    args = parser.parse_args()

    import numpy as np
    import torch
    from mmengine.logging import MessageHub

    from mmvim.checkpoint import load_checkpoint_file
    from mmvim.utils import build_model, load_config

    model = build_model(load_config(args.config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    hub = MessageHub('benchmark')
    for i in range(50):
        hub.update_scalar('train/loss', float(i))
        hub.update_scalar('train/lr', 1e-4)
    hub.update_info('eta', np.float64(3600.0))
    checkpoint = dict(
        meta=dict(iter=1, epoch=0, seed=0, dataset_meta=dict(
            classes=[f'class{i}' for i in range(150)])),
        state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
        param_schedulers=[dict(last_epoch=1, base_lrs=[1e-4])],
        message_hub=hub.state_dict())
    loaders = {
        'mmvim': lambda path: load_checkpoint_file(path, 'cpu'),
        'torch_full': lambda path: torch.load(path, 'cpu',
                                              weights_only=False)}
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'iter_1.pth')
        torch.save(checkpoint, path)
        times = {name: [] for name in loaders}
        for _ in range(args.repeat):
            for name, load in loaders.items():
                start = time.perf_counter()
                load(path)
                times[name].append(time.perf_counter() - start)
        result = dict(config=args.config, file_bytes=os.path.getsize(path),
                      torch=torch.__version__, repeat=args.repeat,
                      **{f'{k}_s': round(min(v), 4) for k, v in
                         times.items()})
    result['mmvim_over_torch_full'] = round(
        result['mmvim_s'] / result['torch_full_s'], 3)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
