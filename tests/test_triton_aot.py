"""tools/triton_aot.py: mmvim's Triton kernels compile for real NVIDIA
targets on a machine without a GPU (Triton's compiler and its bundled
ptxas), and the configs the kernels run by default do not spill."""
import json
import os
import subprocess
import sys

import pytest

from tools import triton_aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compiler_env():
    # a fresh process with the compiler, not the interpreter that the
    # triton tests of this worker may have switched on
    env = dict(os.environ)
    env.pop('TRITON_INTERPRET', None)
    return env


@pytest.mark.slow
def test_default_configs_compile_for_sm90_without_spills(tmp_path):
    """Every kernel (scan and conv, forward and backward) at every call of
    the three backbones and at the corners of the contract, in float32,
    float16 and bfloat16: the default config compiles for sm_90 and
    neither spills registers nor fails."""
    pytest.importorskip('triton')
    out = tmp_path / 'aot.json'
    proc = subprocess.run(
        [sys.executable, 'tools/triton_aot.py', '--arch', '90',
         '--defaults-only', '--json', str(out)], cwd=ROOT,
        env=_compiler_env(), capture_output=True, text=True, timeout=1200)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report['rows']
    assert report['errors'] == 0 and report['default_spills'] == 0, \
        proc.stdout[-3000:]
    assert proc.returncode == 0
    assert {r['kernel'] for r in rows} == {'scan_fwd', 'scan_bwd',
                                           'conv_fwd', 'conv_bwd'}
    assert {r['dtype'] for r in rows} == set(triton_aot.DTYPES)
    assert {r['arch'] for r in rows} == {90}
    cases = {r['case'] for r in rows}
    for model in triton_aot.MODELS:
        assert any(c.startswith(model) for c in cases), model
    assert any('dstate256' in c for c in cases)
    for r in rows:
        assert r['default'] and r['status'] == 'ok'
        assert r['spill_stores'] == 0 and 0 < r['registers'] <= 255, r
    # VMamba's reversed routes reach the kernel as reverse flags
    assert any(r['rev_scan_warps'] for r in rows
               if r['case'].startswith('vmamba'))


def test_refuses_the_interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    with pytest.raises(SystemExit, match='TRITON_INTERPRET'):
        triton_aot.kernel_modules()


TTGIR = '''#blocked = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [32, 1], warpsPerCTA = [1, 4], order = [0, 1]}>
#blocked1 = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [8, 4], warpsPerCTA = [4, 1], order = [1, 0]}>
    %35:2 = "tt.scan"(%a, %x) <{axis = 1 : i32, reverse = false}> ({
    }) : (tensor<32x16xf32, #blocked1>, tensor<32x16xf32, #blocked1>) -> tensor<32x16xf32, #blocked1>
    %36:3 = "tt.scan"(%a, %b, %c) <{axis = 1 : i32, reverse = true}> ({
    }) : (tensor<32x64xf32, #blocked>) -> tensor<32xf32, #blocked>
'''


def test_scan_warps_reads_the_layouts():
    """The audit of triton#4362's case: how many warps share the axis of
    each forward / reverse scan, from the compiled TTGIR."""
    assert triton_aot.scan_warps(TTGIR) == dict(fwd_scan_warps=1,
                                                rev_scan_warps=4)
    assert triton_aot.scan_warps('') == dict(fwd_scan_warps=None,
                                             rev_scan_warps=None)


def test_tables_and_failures():
    rows = [dict(kernel='scan_fwd', case='c', dtype='float32', arch=90,
                 config='BLOCK_D=32 warps=4', default=True, status='ok',
                 registers=200, spill_stores=8, spill_loads=8, shared=0),
            dict(kernel='scan_bwd', case='c', dtype='float32', arch=90,
                 config='BLOCK_D=64 warps=4', default=False, status='error',
                 error='CompilationError: x')]
    bad = triton_aot.failures(rows)
    assert bad['errors'] == rows[1:] and bad['default_spills'] == rows[:1]
    table = triton_aot.table(rows)
    assert '| scan_fwd | c | float32 | sm_90 | BLOCK_D=32 warps=4 | 200 ' \
        '| 8/8 |' in table and 'scan_bwd' not in table
    assert '| scan_bwd | sm_90 | float32 | 1 | 1 |' in \
        triton_aot.summary(rows)
