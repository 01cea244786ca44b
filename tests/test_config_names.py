"""mmvim::configs/... names: a user's experiment in any folder inherits
mmvim's configs (mmvim/config_names.py). The installed-package side (wheel,
.pth hook, training from a user folder) is in tests/test_user_project.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

import mmvim  # noqa: F401  (registers the names)
from mmvim.config_names import (
    PTH_LINE,
    ConfigNameError,
    is_registered,
    list_configs,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]


def scopes(node, found=None):
    """Every ``_scope_`` value in a config tree."""
    found = set() if found is None else found
    if isinstance(node, dict):
        if '_scope_' in node:
            found.add(node['_scope_'])
        for value in node.values():
            scopes(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            scopes(value, found)
    return found


def test_every_config_has_a_name_that_resolves_to_it():
    names = list_configs()
    files = sorted(p.name for p in (ROOT / 'configs').glob('*.py'))
    assert [n.split('/')[-1] for n in names] == files
    assert 'mmvim::configs/upernet_vim_ti_ade20k.py' in names
    for name in names:
        assert Path(resolve(name)).samefile(
            ROOT / 'configs' / name.split('/')[-1])
    assert Path(resolve('mmvim::configs/_base_/models/upernet_vim.py')
                ).samefile(ROOT / 'configs/_base_/models/upernet_vim.py')


def test_user_config_in_another_folder_inherits_a_name(tmp_path):
    user = tmp_path / 'my_upernet.py'
    user.write_text("_base_ = ['mmvim::configs/upernet_vim_s_ade20k.py']\n"
                    'model = dict(decode_head=dict(num_classes=19))\n')
    cfg = Config.fromfile(str(user))
    ref = Config.fromfile(str(ROOT / 'configs/upernet_vim_s_ade20k.py'))
    ref.merge_from_dict(dict(model=dict(decode_head=dict(num_classes=19))))
    # exactly the repository config plus the override ...
    assert cfg.to_dict() == ref.to_dict()
    assert cfg.model.decode_head.num_classes == 19
    # ... built by the toolbox of its default_scope: mmengine's own pkg::
    # inheritance would tag the dicts with _scope_='mmvim', which no
    # registry has
    assert scopes(cfg.to_dict()) == {'mmseg'}
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports.imports == ['mmvim']


def test_detection_config_by_name_keeps_mmdet_scope(tmp_path):
    user = tmp_path / 'det.py'
    user.write_text(
        "_base_ = ['mmvim::configs/mask_rcnn_vmamba_t_fpn_1x_coco.py']\n")
    cfg = Config.fromfile(str(user))
    assert cfg.default_scope == 'mmdet'
    assert cfg.model.backbone.type == 'VMamba'
    assert scopes(cfg.to_dict()) == {'mmdet'}


@pytest.mark.parametrize('name,message', [
    ('mmvim::upernet_vim_s_ade20k.py',
     'write mmvim::configs/upernet_vim_s_ade20k.py'),
    ('mmvim::configs/upernet_vim_s_ade2k.py',
     'Did you mean mmvim::configs/upernet_vim_s_ade20k.py'),
    ('mmvim::configs/../setup.py', 'no mmvim config'),
])
def test_bad_names_say_what_to_write(tmp_path, name, message):
    with pytest.raises(ConfigNameError, match=message):
        resolve(name)
    user = tmp_path / 'bad.py'
    user.write_text(f'_base_ = [{name!r}]\n')
    with pytest.raises(ConfigNameError, match=message):
        Config.fromfile(str(user))


def test_other_packages_names_are_left_to_mmengine():
    assert is_registered()
    cfg = Config.fromfile(str(ROOT / 'configs/upernet_vim_s_ade20k.py'))
    assert cfg.test_evaluator.type == 'IoUMetric'  # from mmseg::
    from mmengine.config.utils import MODULE2PACKAGE
    assert MODULE2PACKAGE['mmvim'] == 'mmvim'
    assert MODULE2PACKAGE['mmseg'] == 'mmsegmentation'


def test_tools_load_a_name_and_report_a_bad_one(tmp_path):
    from mmvim.utils import MMVimConfigError, load_config
    cfg = load_config('mmvim::configs/demo_upernet_vim_shapes.py')
    assert cfg.model.backbone.depth == 6
    with pytest.raises(MMVimConfigError, match='mmvim::configs/demo_'):
        load_config('mmvim::configs/demo_upernet_vim_shape.py')
    user = tmp_path / 'u.py'
    user.write_text("_base_ = ['mmvim::demo_upernet_vim_shapes.py']\n")
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/train.py'), str(user)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert 'write mmvim::configs/demo_upernet_vim_shapes.py' in proc.stderr
    assert 'Traceback' not in proc.stderr


def _python(code, cwd, **env):
    return subprocess.run([sys.executable, *code], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS='ignore',
                                   **env))


def test_startup_hook_lets_plain_mmengine_read_names(tmp_path):
    """What mmvim-config-names.pth does at interpreter start, then plain
    mmengine without `import mmvim`: the names resolve, and the config's
    custom_imports imports mmvim afterwards."""
    (tmp_path / 'user.py').write_text(
        "_base_ = ['mmvim::configs/upernet_vim_ti_ade20k.py']\n")
    code = (PTH_LINE +
            'mods = set(sys.modules)\n'
            'from mmengine.config import Config\n'
            'assert "mmvim" not in sys.modules\n'
            'cfg = Config.fromfile("user.py")\n'
            'print(cfg.model.backbone.arch, "mmvim" in sys.modules, '
            '"mmengine" in mods)\n')
    proc = _python(['-c', code], tmp_path, PYTHONPATH=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the hook itself imports nothing heavy (mmengine came later)
    assert proc.stdout.split() == ['tiny', 'True', 'False']


def test_startup_hook_is_silent_without_mmvim(tmp_path):
    # -S: no site-packages, so Python cannot find mmvim at all
    proc = _python(['-S', '-c', PTH_LINE + 'print("ok")'], tmp_path,
                   PYTHONPATH='')
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok'
    assert proc.stderr == ''
