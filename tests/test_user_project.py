"""An experiment in the user's own folder, as docs/get_started.md ("Your own
project") describes it: one config inheriting an mmvim:: config, trained and
tested with the repository's tools and with plain mmengine from a pip-built
mmvim (a wheel installed into a fresh virtual environment that reuses this
environment's packages: no rebuild of mmcv)."""
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

USER_CONFIG = '''\
# my experiment: the demo UperNet + Vim on my copy of the demo data
_base_ = ['mmvim::configs/demo_upernet_vim_shapes.py']
data_root = {data!r}
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
'''


@pytest.fixture(scope='module')
def project(tmp_path_factory):
    """A folder outside the repository: a data copy and one config."""
    from mmvim.datasets import make_demo_segmentation
    root = tmp_path_factory.mktemp('my_project')
    data = make_demo_segmentation(str(root / 'data' / 'demo_shapes'),
                                  num_train=4, num_val=2, size=64)
    (root / 'my_demo.py').write_text(USER_CONFIG.format(data=data))
    return root


def run(python, args, cwd, **env):
    env = dict(os.environ, PYTHONWARNINGS='ignore', **env)
    if env.get('PYTHONPATH') is None:
        env.pop('PYTHONPATH', None)
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env=env)


@pytest.mark.slow
def test_tools_train_and_test_a_config_from_another_folder(project):
    work = project / 'work'
    proc = run(sys.executable, [str(ROOT / 'tools/train.py'), 'my_demo.py',
                                '--work-dir', str(work)], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / 'iter_2.pth').is_file()
    log = '\n'.join(p.read_text() for p in work.rglob('*.log'))
    # mmvim's environment report follows mmengine's in the log
    assert log.index('System environment') < log.index('mmvim environment')
    assert 'selective_scan: usable backends: ' in log
    proc = run(sys.executable, [str(ROOT / 'tools/test.py'), 'my_demo.py',
                                str(work / 'iter_2.pth'), '--work-dir',
                                str(work)], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Test metrics (my_demo.py): ' in proc.stdout
    assert 'mIoU' in proc.stdout


def _copy_checkout(dst: Path) -> None:
    skip = {'.git', '.venv', 'work_dirs', 'data', 'build', 'dist',
            '.pytest_cache', '.ruff_cache'}
    dst.mkdir()
    for item in ROOT.iterdir():
        if item.name in skip or item.name.endswith('.egg-info'):
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name, symlinks=False,
                            ignore=shutil.ignore_patterns(
                                '__pycache__', '.mim', '*.pyc'))
        else:
            shutil.copy2(item, dst / item.name)


def _fresh_venv(path: Path) -> Path:
    """A venv on top of this environment's site-packages (torch, mmcv, ...
    are reused, after the venv's own packages); returns its site dir."""
    proc = run(sys.executable, ['-m', 'venv', '--without-pip', str(path)],
               path.parent)
    assert proc.returncode == 0, proc.stderr
    site = run(path / 'bin' / 'python',
               ['-c', 'import sysconfig; '
                'print(sysconfig.get_paths()["purelib"])'],
               path.parent).stdout.strip()
    Path(site, '_reuse_test_env.pth').write_text(
        sysconfig.get_paths()['purelib'] + '\n')
    return Path(site)


#: these tests check how configs, tools and the start-up hook are packaged;
#: compiling mmvim._ext once more per install cost over a minute each
NO_EXT = dict(MMVIM_NO_EXT='1')


def _pip(venv: Path, *args, cwd):
    """pip install into ``venv`` only: pip runs for the venv's interpreter
    (``--python``). ``pip install --prefix`` from this environment, even
    with --ignore-installed, uninstalled this environment's editable mmvim
    and broke every later test that imports it from a subprocess."""
    proc = run(sys.executable, ['-m', 'pip', '--python',
                                str(venv / 'bin' / 'python'), 'install',
                                '--no-deps', '--no-index',
                                '--ignore-installed', *args], cwd, **NO_EXT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


NO_IMPORT_CHECK = textwrap.dedent('''
    import sys
    from mmengine.config import Config
    cfg = Config.fromfile('my_demo.py')
    import mmvim
    from mmvim.config_names import resolve
    print(mmvim.__file__)
    print(resolve('mmvim::configs/upernet_vim_ti_ade20k.py'))
    print(cfg.model.backbone.type, cfg.model.decode_head.num_classes)
    ''')


@pytest.fixture(scope='module')
def wheel_python(tmp_path_factory):
    """A fresh venv holding mmvim as built into a wheel."""
    tmp = tmp_path_factory.mktemp('wheel')
    _copy_checkout(tmp / 'src')
    proc = run(sys.executable, ['-m', 'pip', 'wheel', '--no-deps',
                                '--no-build-isolation', '-w', str(tmp / 'dist'),
                                str(tmp / 'src')], tmp, **NO_EXT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel, = (tmp / 'dist').glob('mmvim-*.whl')
    site = _fresh_venv(tmp / 'venv')
    _pip(tmp / 'venv', str(wheel), cwd=tmp)
    return tmp / 'venv' / 'bin' / 'python', site


@pytest.mark.slow
def test_wheel_ships_the_configs_and_resolves_names(wheel_python, project):
    python, site = wheel_python
    mim = site / 'mmvim' / '.mim'
    for name in ('configs/upernet_vim_ti_ade20k.py',
                 'configs/_base_/models/upernet_vim.py', 'tools/train.py',
                 'model-index.yml', 'configs/vim/metafile.yml'):
        copy = mim / name
        assert copy.is_file() and not copy.is_symlink()
        assert copy.read_text() == (ROOT / name).read_text()
    assert (site / 'mmvim-config-names.pth').is_file()
    # plain mmengine, no `import mmvim`: the names resolve in the venv
    proc = run(python, ['-c', NO_IMPORT_CHECK], project, PYTHONPATH=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split('\n')
    assert lines[0] == str(site / 'mmvim' / '__init__.py')
    assert lines[1] == str(mim / 'configs' / 'upernet_vim_ti_ade20k.py')
    assert lines[2] == 'Vim 4'


@pytest.mark.slow
def test_editable_install_links_the_configs(tmp_path, project):
    """make install's `pip install -e` (compat mode, as
    scripts/setup_env.sh: this environment's site-packages, which the venv
    reuses, holds make install's mmvim/.mim folder for mim, and only the
    checkout on sys.path keeps that folder from hiding the package): .mim
    links to the checkout's configs/, tools/ and model-index.yml, the
    start-up hook is installed."""
    _copy_checkout(tmp_path / 'src')
    site = _fresh_venv(tmp_path / 'venv')
    python = tmp_path / 'venv' / 'bin' / 'python'
    _pip(tmp_path / 'venv', '--no-build-isolation', '--config-settings',
         'editable_mode=compat', '-e', str(tmp_path / 'src'), cwd=tmp_path)
    mim = tmp_path / 'src' / 'mmvim' / '.mim'
    for name in ('configs', 'tools', 'model-index.yml'):
        assert (mim / name).is_symlink()
        assert (mim / name).resolve() == (tmp_path / 'src' / name).resolve()
    assert (site / 'mmvim-config-names.pth').is_file()
    proc = run(python, ['-c', NO_IMPORT_CHECK], project, PYTHONPATH=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split('\n')
    assert lines[0] == str(tmp_path / 'src' / 'mmvim' / '__init__.py')
    assert lines[1] == str(mim / 'configs' / 'upernet_vim_ti_ade20k.py')
    assert lines[2] == 'Vim 4'


@pytest.mark.slow
def test_plain_mmengine_trains_and_tests_with_the_wheel(wheel_python,
                                                        project):
    """Config.fromfile + Runner.from_cfg, without importing mmvim: the
    config's inherited custom_imports registers the models."""
    python, site = wheel_python
    code = textwrap.dedent('''
        import sys
        from mmengine.config import Config
        from mmengine.runner import Runner
        cfg = Config.fromfile('my_demo.py')
        cfg.work_dir = 'plain_work'
        runner = Runner.from_cfg(cfg)
        runner.train()
        metrics = runner.test()
        print(sys.modules['mmvim'].__file__)
        print(sorted(metrics))
        ''')
    proc = run(python, ['-c', code], project, PYTHONPATH=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().split('\n')
    assert lines[-2] == str(site / 'mmvim' / '__init__.py')
    assert 'mIoU' in lines[-1]
    assert (project / 'plain_work' / 'iter_2.pth').is_file()


def _documented_config() -> str:
    """The project config of docs/get_started.md, as written there."""
    doc = (ROOT / 'docs' / 'get_started.md').read_text()
    start = doc.index('```python\n# my_project/my_upernet.py')
    return doc[start + len('```python\n'):doc.index('```', start + 3)]


def test_documented_project_config_reads_its_dataset(tmp_path, monkeypatch):
    """The get_started.md project: its custom dataset finds the demo scenes
    written into its layout, with 0 unlabelled and three classes."""
    import numpy as np
    from mmengine.config import Config
    from mmseg.registry import DATASETS

    from mmvim.datasets import make_demo_segmentation
    from mmvim.utils import build_model
    make_demo_segmentation(str(tmp_path / 'data' / 'my_dataset'),
                           num_train=3, num_val=2, size=64)
    (tmp_path / 'my_upernet.py').write_text(_documented_config())
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile('my_upernet.py')
    assert cfg.model.backbone.arch == 'tiny'  # upernet_vim_ti_ade20k.py
    assert cfg.model.decode_head.num_classes == 3
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.test_dataloader.dataset)
    assert (len(train), len(val)) == (3, 2)
    assert train.metainfo['classes'] == ('disc', 'square', 'triangle')
    sample = train[0]['data_samples']
    labels = set(np.unique(sample.gt_sem_seg.data.numpy()))
    assert labels <= {0, 1, 2, 255} and 255 in labels  # background ignored
    assert build_model(cfg).decode_head.conv_seg.out_channels == 3
