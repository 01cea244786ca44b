"""What tools/train.py and tools/test.py share: load a config with clear
errors, check the scope and the dataset paths, build the mmengine Runner.

The distributed engine is PyTorch's (torchrun / mmengine's launcher); nothing
here reimplements it.
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
from typing import Iterator, List, Optional, Tuple

from mmengine.config import Config, ConfigDict

SUPPORTED_SCOPES = ('mmseg', 'mmdet')


class MMVimConfigError(RuntimeError):
    """A config or the files it names cannot be used; the message says why
    and what to do."""


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Load a config file or an ``mmvim::`` name
    (``mmvim::configs/upernet_vim_s_ade20k.py``), merge ``--cfg-options``
    and check the default scope. The file may live in any folder and
    inherit ``mmvim::`` bases."""
    from ..config_names import ConfigNameError, is_config_name, resolve
    try:
        if is_config_name(path):
            path = resolve(path)
        elif not osp.isfile(path):
            hint = ''
            if not path.endswith('.py'):
                hint = ' (configs are Python files: did you mean ' \
                       f'{path}.py?)'
            raise MMVimConfigError(
                f'config file {path!r} does not exist{hint}. Configs live '
                'in configs/, e.g. configs/upernet_vim_s_ade20k.py, or name '
                'one from any folder as mmvim::configs/upernet_vim_s_ade20k.py.')
        cfg = Config.fromfile(path)
    except ConfigNameError as err:  # a bad mmvim:: name, maybe in a _base_
        raise MMVimConfigError(str(err)) from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in SUPPORTED_SCOPES:
        raise MMVimConfigError(
            f'config {path!r} has default_scope={scope!r}; mmvim tools run '
            f'configs whose default_scope is one of {SUPPORTED_SCOPES} '
            "(inherit an mmseg:: or mmdet:: base, or set default_scope).")
    imports = cfg.get('custom_imports', {}).get('imports', [])
    if 'mmvim' not in imports:
        # mmvim must be imported for its modules to be found; the tools
        # import it themselves, this keeps a dumped config self-contained.
        cfg.custom_imports = dict(imports=list(imports) + ['mmvim'],
                                  allow_failed_imports=False)
    return cfg


def _datasets(node) -> Iterator[ConfigDict]:
    """Leaf dataset configs under a (possibly wrapped) dataset config."""
    if not isinstance(node, dict):
        return
    if 'dataset' in node:  # RepeatDataset, ClassBalancedDataset, ...
        yield from _datasets(node['dataset'])
    elif 'datasets' in node:  # ConcatDataset
        for sub in node['datasets']:
            yield from _datasets(sub)
    else:
        yield node


def _dataset_paths(ds: ConfigDict) -> List[Tuple[str, str]]:
    root = ds.get('data_root') or ''
    paths = []
    if root:
        paths.append(('data_root', root))
    ann = ds.get('ann_file') or ''
    if ann:
        paths.append(('ann_file', ann if osp.isabs(ann) else
                      osp.join(root, ann)))
    for key, sub in (ds.get('data_prefix') or {}).items():
        if isinstance(sub, str) and sub:
            paths.append((f'data_prefix.{key}', sub if osp.isabs(sub) else
                          osp.join(root, sub)))
    return paths


def check_dataset_paths(cfg: Config, loaders: Tuple[str, ...]) -> None:
    """Raise a clear error if a dataset path named by ``loaders`` is missing.

    ``loaders`` are config keys such as 'train_dataloader'. The message says
    which path is missing and how to point the config elsewhere.
    """
    problems = []
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg:
            continue
        for ds in _datasets(loader_cfg.get('dataset')):
            for key, path in _dataset_paths(ds):
                if not osp.exists(path):
                    problems.append(
                        f'  {loader}: {key} {path!r} does not exist '
                        f'(dataset type {ds.get("type")})')
                    if key == 'data_root':
                        break  # everything under it is missing too
        # COCO-style metrics read the annotation file themselves; their path
        # does not follow a data_root override, so check it too.
        evaluator = cfg.get(loader.replace('_dataloader', '_evaluator'))
        for ev in (evaluator if isinstance(evaluator, (list, tuple))
                   else [evaluator]):
            ann = ev.get('ann_file') if isinstance(ev, dict) else None
            if isinstance(ann, str) and ann and not osp.exists(ann):
                name = loader.replace('_dataloader', '_evaluator')
                problems.append(
                    f'  {name}: ann_file {ann!r} does not exist (metric '
                    f'{ev.get("type")}; set --cfg-options {name}.ann_file=...)')
    if problems:
        raise MMVimConfigError(
            'dataset files are missing:\n' + '\n'.join(problems) +
            '\nPrepare the dataset as described in docs/get_started.md, or '
            'point the config at your copy, e.g. --cfg-options '
            f'{loaders[0]}.dataset.data_root=/path/to/data (and the other '
            'dataloaders likewise).')


def _pretrained_inits(node, path='model'):
    """(config path, checkpoint) of every Pretrained init_cfg under node."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            yield path, node['checkpoint']
        for key, value in node.items():
            yield from _pretrained_inits(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _pretrained_inits(value, f'{path}[{i}]')


def check_pretrained_paths(cfg: Config) -> None:
    """Raise a clear error if a local pretrained checkpoint is missing
    (before training starts, not after the runner is built)."""
    problems = [
        f'  {where}.checkpoint {ckpt!r} does not exist'
        for where, ckpt in _pretrained_inits(cfg.get('model'))
        if isinstance(ckpt, str) and '://' not in ckpt
        and not osp.exists(ckpt)]
    if problems:
        raise MMVimConfigError(
            'pretrained weights are missing:\n' + '\n'.join(problems) +
            '\nDownload them as docs/get_started.md (Pretrained backbones) '
            'describes, point the config at your copy with --cfg-options '
            '<that key>=/path/to/file.pth, or train from scratch with '
            '--cfg-options <that key without .checkpoint>=None.')


def build_runner(cfg: Config, strict_load: bool = False):
    """Build the Runner the config asks for (``runner_type``), by default
    :class:`mmvim.engine.MMVimRunner`, which converts official dense
    checkpoints on load; ``strict_load`` makes every key of a loaded
    checkpoint have to fit (tools/test.py)."""
    from mmengine.registry import RUNNERS

    from ..engine import MMVimRunner
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg \
        else MMVimRunner.from_cfg(cfg)
    if isinstance(runner, MMVimRunner):
        runner.strict_load = strict_load
    return runner


def finish_distributed() -> None:
    """End a multi-process run cleanly: wait for every rank, then destroy
    the process group (mmengine never does). Left to interpreter exit, the
    live group's threads (gloo, rank 0's TCPStore) were torn down in an
    arbitrary order, and once in a CI run rank 0 aborted with SIGABRT
    (``terminate called without an active exception``) after a complete
    training, failing torchrun. A no-op without a process group."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def syncbn_to_bn(node) -> None:
    """SyncBN -> BN, in place, everywhere in a model config: SyncBN needs a
    process group, which a single CPU process (tests, FLOP counts,
    benchmarks) does not have. The weights and their names are the same."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for value in node.values():
            syncbn_to_bn(value)
    elif isinstance(node, list):
        for value in node:
            syncbn_to_bn(value)


def model_registry(cfg: Config):
    """The MODELS registry of the config's scope (mmseg or mmdet), with that
    toolbox's modules registered."""
    import importlib
    scope = cfg.get('default_scope', 'mmseg')
    importlib.import_module(f'{scope}.utils').register_all_modules()
    return importlib.import_module(f'{scope}.registry').MODELS


def build_model(cfg: Config, pretrained: bool = False,
                single_process: bool = True):
    """``cfg.model`` built in the config's scope (mmseg or mmdet), in eval
    mode. Without ``pretrained`` the backbone's ``init_cfg`` is dropped (no
    download); with ``single_process`` SyncBN becomes BN
    (:func:`syncbn_to_bn`)."""
    model_cfg = copy.deepcopy(cfg.model)
    if not pretrained and 'backbone' in model_cfg:
        model_cfg.backbone.init_cfg = None
        model_cfg.pop('pretrained', None)
    if single_process:
        syncbn_to_bn(model_cfg)
    model = model_registry(cfg).build(model_cfg)
    if pretrained:
        model.init_weights()
    model.eval()  # (mmseg's ViT.train returns None: no chaining)
    return model


def add_runner_args(parser: argparse.ArgumentParser, example: str) -> None:
    """--cfg-options, --launcher and --local-rank, as in mmseg/mmdet tools,
    and --trust-checkpoint."""
    from mmengine.config import DictAction
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help=f'override config settings, e.g. {example}')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        help='job launcher (tools/dist_*.sh use pytorch)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    from ..checkpoint.io import add_trust_flag
    add_trust_flag(parser)


def apply_runner_args(cfg: Config, args: argparse.Namespace) -> None:
    """Set launcher, LOCAL_RANK, the work dir (default work_dirs/<name>)
    and ``--trust-checkpoint``."""
    from ..checkpoint.io import apply_trust_flag
    apply_trust_flag(args)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.launcher == 'pytorch' and not all(
            k in os.environ for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')):
        raise MMVimConfigError(
            '--launcher pytorch expects the process to be started by '
            'torchrun (RANK, WORLD_SIZE and MASTER_ADDR are not set): use '
            'tools/dist_train.sh / tools/dist_test.sh, or drop --launcher '
            'for a single process.')
    if args.launcher in ('slurm', 'mpi'):
        import torch
        if not torch.cuda.is_available():
            raise MMVimConfigError(
                f'--launcher {args.launcher} binds one GPU to each process '
                'and this machine has no CUDA device; CPU multi-process '
                'runs go through torchrun (tools/dist_train.sh).')
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
