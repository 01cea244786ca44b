"""``make gpu-bundle``: everything one call on the lent GPU machine needs,
in ``.gpu-bundle/`` (git-ignored; name it in the call's ``carry``).

The device image has python 3.12, torch 2.11 (CUDA 13), triton 3.6,
numpy, timm, onnx, onnxruntime and pytest, and no network. The bundle
adds only what the phases import and the image lacks (imports.py says
why mmcv, mmseg and mmdet are not among it):

* wheels/  cp312 manylinux wheels, installed without dependencies:
           mmengine and what it imports (lite import of mmvim); einops,
           transformers, tokenizers and regex (``import mamba_ssm``, phase
           6); ninja and wheel (its build);
* sdists/  the pinned mamba-ssm and causal-conv1d sources (phase 6);
* src/     mmvim's sources (mmvim/, tools/, tests/ as in the work tree);
* run.sh   installs the wheels into a folder and runs the check:
           ``bash .gpu-bundle/run.sh [gpu_check arguments]``; TARGET (the
           install folder, default /tmp/mmvim-gpu-env), PYTHON and BUDGET
           (default 480) from the environment; the report goes to $OUT
           (the device call's returned folder) or the bundle.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .imports import kernel_sdists

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / '.gpu-bundle'
LIMIT_MB = 64  # what one device call carries (MiB)

WHEELS = [
    # mmengine and its imports on the lite path (BaseModule, Registry,
    # Config); its opencv / matplotlib are imported only by what mmvim's
    # kernels and backbones never load
    'mmengine==0.10.7', 'addict==2.4.0', 'yapf==0.43.0',
    'platformdirs==4.14.5', 'rich==15.0.0', 'markdown-it-py==4.3.0',
    'mdurl==0.1.2', 'termcolor==3.3.0',
    # phase 6: `import mamba_ssm` (its __init__ reaches transformers)
    'einops==0.8.2', 'transformers==5.23.0', 'tokenizers==0.23.3',
    'regex==2026.11.15',
    # phase 6: the build (ninja: parallel compilation; wheel: pip's build)
    'ninja==1.13.2', 'wheel==0.48.0',
]
PLATFORM = ['--only-binary', ':all:', '--python-version', '3.12',
            '--implementation', 'cp', '--abi', 'cp312', '--platform',
            'manylinux_2_28_x86_64', '--platform', 'manylinux_2_17_x86_64',
            '--platform', 'manylinux2014_x86_64']
SOURCES = ('mmvim', 'tools', 'tests')

RUN_SH = r'''#!/bin/sh
# mmvim's GPU check from its bundle (make gpu-bundle; docs/triton.md).
# Installs the carried wheels into $TARGET without network and runs
# tools/gpu_check.py --budget ${BUDGET:-480} [arguments]; the report goes
# to $OUT (the device call's returned folder) or this folder.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
TARGET=${TARGET:-/tmp/mmvim-gpu-env}
REPORT=${OUT:-$HERE}
"$PY" -m pip install -q --no-index --no-deps --no-compile \
  --disable-pip-version-check --target "$TARGET" "$HERE"/wheels/*.whl
export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}"
export MMVIM_KERNEL_SDIST_DIR="$HERE/sdists"
cd "$HERE/src"
"$PY" -c 'import torch, triton; print("torch", torch.__version__,
  "triton", triton.__version__, "cuda", torch.cuda.is_available())'
exec "$PY" tools/gpu_check.py --budget "${BUDGET:-480}" \
  --out "$REPORT/gpu_check.json" --work-dir "$REPORT/gpu_check" "$@"
'''


def sources() -> list:
    """The work tree's files under SOURCES (tracked and untracked, not
    ignored), C++ sources left out (the CPU extension is not built there)."""
    out = subprocess.run(['git', 'ls-files', '--cached', '--others',
                          '--exclude-standard', *SOURCES], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines()
            if (ROOT / p).is_file() and not p.startswith('mmvim/csrc/')]


def build(out: Path = BUNDLE) -> dict:
    """Write the bundle; returns its size (MiB) and contents."""
    if out.exists():
        shutil.rmtree(out)
    (out / 'wheels').mkdir(parents=True)
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps',
                    '--disable-pip-version-check', '-q', *PLATFORM, '-d',
                    str(out / 'wheels'), *WHEELS], check=True)
    sd = kernel_sdists()
    for pkg in sd.SDISTS:
        sd.fetch_sdist(pkg, out / 'sdists')
    for rel in sources():
        dst = out / 'src' / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dst)
    run_sh = out / 'run.sh'
    run_sh.write_text(RUN_SH)
    run_sh.chmod(0o755)
    files = [p for p in out.rglob('*') if p.is_file()]
    size = sum(p.stat().st_size for p in files) / 2**20
    return dict(size_mb=size, wheels=sorted(
        p.name for p in (out / 'wheels').iterdir()),
        sdists=sorted(p.name for p in (out / 'sdists').glob('*.tar.gz')),
        sources=len(sources()), run_sh_chars=len(RUN_SH))


def main() -> int:
    info = build()
    for name in info['wheels'] + info['sdists']:
        size = next(BUNDLE.rglob(name)).stat().st_size / 2**20
        print(f'  {size:6.2f} MiB  {name}')
    print(f'{BUNDLE}: {info["size_mb"]:.1f} MiB ({info["sources"]} source '
          f'files; run.sh {info["run_sh_chars"]} characters)')
    if info['size_mb'] > LIMIT_MB:
        print(f'error: more than the {LIMIT_MB} MiB a device call carries')
        return 1
    print('device call: run(command="bash .gpu-bundle/run.sh", '
          'carry=[".gpu-bundle"])  (docs/triton.md)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
