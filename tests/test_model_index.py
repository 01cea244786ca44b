"""The model index that ``mim`` reads (model-index.yml and the metafiles
that tools/model_index.py generates): one entry per config, the paper's
numbers as docs/model_zoo.md gives them, and ``mim search / train / test
mmvim`` through mmvim's tools."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location(
        'model_index_tool', ROOT / 'tools' / 'model_index.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _tool()


def _entries():
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    models = []
    for metafile in index['Import']:
        data = yaml.safe_load((ROOT / metafile).read_text())
        for model in data['Models']:
            models.append((metafile, model))
    return models


ENTRIES = _entries()


def _zoo():
    return TOOL.read_model_zoo((ROOT / 'docs/model_zoo.md').read_text())


def test_every_config_has_one_entry_and_every_entry_names_a_config():
    configs = TOOL.config_paths(str(ROOT))
    assert len(configs) >= 30  # configs/*.py and configs/ablations/*.py
    named = [model['Config'] for _, model in ENTRIES]
    assert sorted(named) == sorted(configs)
    names = [model['Name'] for _, model in ENTRIES]
    assert len(set(names)) == len(names)
    for metafile, model in ENTRIES:
        assert (ROOT / model['Config']).is_file(), model['Config']
        assert model['Name'] == Path(model['Config']).stem
        family = model['In Collection']
        assert metafile == f'configs/{family.lower()}/metafile.yml'
        assert model['Metadata']['Backbone'].startswith(family + '-')


def test_metrics_equal_the_model_zoo_page():
    metrics, releases = _zoo()
    by_config = {Path(m['Config']).name: m for _, m in ENTRIES}
    # every model-zoo row is an entry with exactly that row's metrics
    for config, expected in metrics.items():
        found = {}
        for result in by_config[config]['Results']:
            found.update(result['Metrics'])
        assert found == expected, config
        source = by_config[config]['Metadata']['Metric Source']
        assert source == ('paper' if expected else 'none: not in the paper')
    # configs without a row (demos, ablations) carry no metric at all
    for config, model in by_config.items():
        if config not in metrics:
            assert all(r['Metrics'] == {} for r in model['Results'])
            assert model['Metadata']['Metric Source'].startswith('none: ')
    # the page's numbers, read independently of the parser
    assert metrics['upernet_vim_ti_ade20k.py'] == {'mIoU': 41.0}
    assert metrics['upernet_vmamba_s_ade20k.py'] == {
        'mIoU': 50.6, 'mIoU(ms+flip)': 51.2}
    assert metrics['cascade_mask_rcnn_vim_ti_vitdet_coco.py'] == {
        'box AP': 45.7, 'mask AP': 39.2}
    assert metrics['cascade_mask_rcnn_mambavision_b_fpn_3x_coco.py'] == {
        'box AP': 52.8, 'mask AP': 45.7}
    assert metrics['mask_rcnn_vim_s_fpn_1x_coco.py'] == {}
    assert len(metrics) == 19
    # trained releases: the release table's first URL for the config
    assert len(releases) == 14
    for config, url in releases.items():
        assert by_config[config]['Weights'] == url
        assert url in by_config[config]['Convert']
    assert sum('Weights' in m for m in by_config.values()) == len(releases)


def test_tasks_datasets_and_convert_commands():
    for _, model in ENTRIES:
        meta, results = model['Metadata'], model['Results']
        tasks = [r['Task'] for r in results]
        assert tasks in (['Semantic Segmentation'],
                         ['Object Detection', 'Instance Segmentation'])
        assert {r['Dataset'] for r in results} == {meta['Training Data']}
        assert meta['Training Data'] in ('ADE20K', 'COCO', 'Demo Shapes')
        assert model['Paper'].startswith('https://arxiv.org/abs/')
        if meta['Training Data'] == 'Demo Shapes':
            # trained from scratch: no checkpoint to convert
            assert 'Convert' not in model and 'Pretrained' not in meta
            continue
        assert meta['Pretrained'].startswith('https://'), model['Name']
        family = model['In Collection'].lower()
        assert model['Convert'].startswith(
            f'python tools/convert_checkpoint.py {family} https://')
        if 'Weights' in model:  # a whole segmentor / detector
            assert model['Convert'].endswith(f'--config {model["Config"]}')


def test_the_index_loads_with_model_index_as_mim_reads_it():
    load = pytest.importorskip('modelindex.load_model_index').load
    index = load(str(ROOT / 'model-index.yml'))
    assert index.check(silent=True) == []
    assert len(index.models) == len(ENTRIES)


def test_a_model_zoo_row_without_a_config_is_an_error(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'configs').mkdir()
    (tmp_path / 'docs/model_zoo.md').write_text(
        '| config | backbone init | paper params / FLOPs / mIoU SS (MS) |\n'
        '|---|---|---|\n'
        '| `upernet_gone_ade20k.py` | x | 1M / – / 40.0 |\n')
    with pytest.raises(TOOL.ModelIndexError,
                       match='upernet_gone_ade20k.py names no config'):
        TOOL.build_index(str(tmp_path))
    with pytest.raises(TOOL.ModelIndexError, match='cannot read'):
        TOOL.paper_metrics('1M / 40.0', 'paper params / FLOPs / mIoU SS')


def _run(*args, cwd=ROOT, timeout=900):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_generated_files_are_up_to_date():
    """model-index.yml and the metafiles are what tools/model_index.py
    makes from docs/model_zoo.md and the configs now (loads every
    config: about a minute)."""
    proc = _run('tools/model_index.py', '--check')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _mim_ready():
    try:
        from mim.utils import get_installed_path
    except ImportError:
        pytest.fail('openmim is missing: `make install` installs it (dev '
                    'extra, scripts/setup_env.sh)')
    index = Path(get_installed_path('mmvim'), '.mim', 'model-index.yml')
    assert index.is_file(), (
        f'{index} is missing: mim cannot see mmvim; run `make install` '
        '(it links site-packages/mmvim/.mim for the editable install)')


def _search_blocks(text: str) -> dict:
    """{config id: {field: value}} from `mim search`'s printed listing."""
    blocks, current = {}, None
    for line in text.splitlines():
        if line.startswith('config id: '):
            current = blocks.setdefault(line.split(': ', 1)[1].strip(), {})
        elif current is not None and line.strip() and \
                not line.startswith('---'):
            field, _, value = line.partition(' ')
            current[field] = value.strip()
    return blocks


@pytest.mark.slow
def test_mim_search_lists_every_config_with_its_metric(tmp_path):
    _mim_ready()
    proc = _run('-m', 'mim', 'search', 'mmvim', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = _search_blocks(proc.stdout)
    assert sorted(listed) == sorted(m['Name'] for _, m in ENTRIES)
    metrics, _ = _zoo()
    for config, expected in metrics.items():
        row = listed[Path(config).stem]
        shown = {k: float(v) for k, v in row.items()
                 if k.startswith(('ade20k/', 'coco/'))}
        assert shown == {
            ('ade20k/' if 'mIoU' in key else 'coco/')
            + key.lower().replace(' ', '_'): value
            for key, value in expected.items()}, config
        assert row['metric_source'] == (
            'paper' if expected else 'none: not in the paper')
        assert row['config'] == by_name(Path(config).stem)['Config']


def by_name(name: str) -> dict:
    return next(m for _, m in ENTRIES if m['Name'] == name)


@pytest.mark.slow
def test_mim_train_and_test_run_mmvims_tools(tmp_path):
    """`mim train mmvim <demo config>` for two iterations and `mim test`
    on its checkpoint, from a folder outside the checkout (mim finds the
    config and tools in mmvim/.mim)."""
    _mim_ready()
    from mmvim.datasets import make_demo_segmentation
    data = make_demo_segmentation(str(tmp_path / 'data'), num_train=4,
                                  num_val=2, size=64)
    work = tmp_path / 'work'
    loaders = [f'{split}_dataloader.{k}'
               for split in ('train', 'val', 'test')
               for k in (f'dataset.data_root={data}', 'num_workers=0',
                         'persistent_workers=False')]
    opts = ['--work-dir', str(work), '--cfg-options', *loaders,
            'train_dataloader.batch_size=2', 'train_cfg.max_iters=2',
            'train_cfg.val_interval=2', 'default_hooks.checkpoint.interval=2',
            'default_hooks.logger.interval=1']
    proc = _run('-m', 'mim', 'train', 'mmvim',
                'configs/demo_upernet_vim_shapes.py', '--gpus', '0', *opts,
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tool = Path(os.path.realpath(ROOT / 'tools' / 'train.py'))
    command = next(line for line in proc.stdout.splitlines()
                   if line.startswith('Training command is'))
    assert os.path.realpath(command.split()[4]) == str(tool)
    assert 'Iter(train) [2/2]' in proc.stdout + proc.stderr
    assert (work / 'iter_2.pth').is_file()
    proc = _run('-m', 'mim', 'test', 'mmvim',
                'configs/demo_upernet_vim_shapes.py', '--checkpoint',
                str(work / 'iter_2.pth'), '--gpus', '0', *opts, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Test metrics (demo_upernet_vim_shapes.py): ' in proc.stdout
