"""Importing and registering: what a user's config relies on."""
import subprocess
import sys

import pytest
from mmengine.config import Config


def run_python(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300)


def test_import_does_not_touch_kernel_packages():
    proc = run_python(
        'import sys, mmvim, mmvim.ops; '
        'print(sorted(m for m in ("mamba_ssm", "causal_conv1d", '
        '"selective_scan_cuda", "triton") if m in sys.modules))')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


def test_import_survives_broken_kernel_packages(tmp_path):
    """A mamba_ssm that fails at import (as on CPU) must not break us."""
    for pkg in ('mamba_ssm', 'causal_conv1d'):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / '__init__.py').write_text(
            'import selective_scan_cuda  # missing extension, as on CPU\n')
    proc = subprocess.run(
        [sys.executable, '-c',
         'import torch, mmvim; from mmvim.ops import cuda_kernel_status, '
         'selective_scan; s = cuda_kernel_status(); '
         'print(s["selective_scan"] is not None, s["causal_conv1d"] is not '
         'None); x = torch.randn(1, 2, 3); '
         'print(selective_scan(x, x.abs(), -torch.ones(2, 1), '
         'torch.ones(1, 1, 3), torch.ones(1, 1, 3)).shape)'],
        capture_output=True, text=True, timeout=300,
        env={'PYTHONPATH': str(tmp_path), 'PATH': '/usr/bin:/bin'})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split('\n')[0] == 'True True'
    assert 'torch.Size([1, 2, 3])' in proc.stdout


def test_demo_dataset_registered_in_both_toolboxes():
    from mmdet.registry import DATASETS as DET
    from mmseg.registry import DATASETS as SEG

    import mmvim  # noqa: F401
    assert SEG.get('DemoShapesDataset') is DET.get('DemoShapesDataset')
    assert SEG.get('DemoShapesDataset') is not None


def test_register_model_reaches_both_registries():
    import torch.nn as nn
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    from mmvim.registry import register_model

    @register_model(name='_MMVimRegistryProbe')
    class Probe(nn.Module):
        pass

    try:
        assert SEG.build(dict(type='_MMVimRegistryProbe')).__class__ is Probe
        assert DET.build(dict(type='_MMVimRegistryProbe')).__class__ is Probe
    finally:
        SEG._module_dict.pop('_MMVimRegistryProbe')
        DET._module_dict.pop('_MMVimRegistryProbe')


def test_custom_imports_in_a_config_registers_mmvim(tmp_path):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        "custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)"
        "\ndefault_scope = 'mmseg'\n")
    proc = run_python(
        'from mmengine.config import Config\n'
        'from mmengine.utils import import_modules_from_strings\n'
        f'cfg = Config.fromfile({str(cfg_file)!r})\n'
        'import_modules_from_strings(**cfg.custom_imports)\n'
        'from mmseg.registry import DATASETS\n'
        'print(DATASETS.get("DemoShapesDataset") is not None)\n')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'True'


def test_demo_config_builds_with_mmseg_bases():
    cfg = Config.fromfile('configs/demo_upernet_vim_shapes.py')
    assert cfg.default_scope == 'mmseg'
    assert cfg.train_dataloader.dataset.type == 'DemoShapesDataset'
    assert cfg.model.decode_head.num_classes == 4


@pytest.mark.parametrize('bad', ['configs/no_such.py', 'configs/no_such'])
def test_load_config_missing_file_message(bad):
    from mmvim.utils import MMVimConfigError, load_config
    with pytest.raises(MMVimConfigError, match='does not exist'):
        load_config(bad)
