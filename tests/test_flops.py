"""FLOPs counting (mmvim.utils.flops, tools/get_flops.py)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmvim.models import VMamba
from mmvim.utils.flops import count_flops, selective_scan_flops

ROOT = Path(__file__).resolve().parents[1]


def test_selective_scan_formula():
    # 9 B L D N, plus B D L for the D skip and for the z gate
    assert selective_scan_flops(2, 10, 4, 3, False, False) == 9 * 2 * 10 * 4 * 3
    assert selective_scan_flops(2, 10, 4, 3, True, True) == \
        9 * 2 * 10 * 4 * 3 + 2 * 2 * 4 * 10


@pytest.mark.parametrize('arch,official', [('tiny', 4.9056),
                                           ('small', 8.7158),
                                           ('base', 15.3589)])
def test_vmamba_classification_flops_match_the_official_analysis(arch,
                                                                  official):
    """Official (README / analyze): 4.9G / 8.7G / 15.4G at 224x224 for the
    classifier; ours = backbone with the one final norm + the 1000-way
    linear head."""
    model = VMamba(arch, out_indices=(3, )).eval()
    with torch.no_grad():
        flops, by_op = count_flops(model, (torch.randn(1, 3, 224, 224), ))
    flops += model.dims[-1] * 1000
    assert abs(flops / 1e9 / official - 1) < 0.02
    assert by_op['PythonOp.SelectiveScanFlops'] > 0


def test_the_real_scan_is_back_after_counting():
    from mmvim.models.layers import SS2D
    m = SS2D(8, d_state=2)
    x = torch.randn(1, 4, 5, 8)
    with torch.no_grad():
        count_flops(m, (x, ))
        out = m(x)
    assert out.abs().sum() > 0  # the stand-in returns zeros


@pytest.mark.slow
def test_get_flops_tool_on_the_upernet_config():
    """The official UperNet + VMamba-T figure is 949G at 512x2048."""
    proc = subprocess.run(
        [sys.executable, 'tools/get_flops.py',
         'configs/upernet_vmamba_t_ade20k.py', '--shape', '512', '2048'],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if 'GFLOPs' in ln][0]
    gflops = float(line.split('M params,')[1].split('GFLOPs')[0])
    assert abs(gflops / 949 - 1) < 0.02
