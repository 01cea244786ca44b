"""The source distributions of the CUDA kernel packages mmvim calls
(mamba-ssm, causal-conv1d): pinned versions, where they are cached, how
they are fetched and how they are built for one GPU.

Two users: the CUDA glue contract test (tests/test_cuda_glue_contract.py)
reads their Python interface code and C++ argument checks on CPU, and
``tools/gpu_check.py`` builds them on a GPU machine that has no network
from the same cached files (carry the cache directory along).

Nothing here imports the packages; the unpacked sources are never put on
``sys.path``.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, Optional, Tuple

# The versions whose sources the contract test's stand-ins were written
# from, in the order they are built (mamba-ssm's interface imports
# causal-conv1d).
SDISTS = {
    'causal_conv1d': dict(
        dist='causal-conv1d', version='1.7.0', module='causal_conv1d_cuda',
        sha256='3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b',
        env_prefix='CAUSAL_CONV1D'),
    'mamba_ssm': dict(
        dist='mamba-ssm', version='2.3.2.post1', module='selective_scan_cuda',
        sha256='104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028',
        env_prefix='MAMBA'),
}
SDIST_DIR_ENV = 'MMVIM_KERNEL_SDIST_DIR'

_REPO = Path(__file__).resolve().parents[2]


def sdist_dir() -> Path:
    """$MMVIM_KERNEL_SDIST_DIR, else <repo>/.cache/kernel-sdists in a
    checkout (git-ignored; carried to a GPU machine with the tree), else
    ~/.cache/mmvim/kernel-sdists."""
    if os.environ.get(SDIST_DIR_ENV):
        return Path(os.environ[SDIST_DIR_ENV])
    if (_REPO / 'setup.py').exists():
        return _REPO / '.cache' / 'kernel-sdists'
    return Path.home() / '.cache' / 'mmvim' / 'kernel-sdists'


def sdist_path(pkg: str, cache: Optional[Path] = None) -> Path:
    pin = SDISTS[pkg]
    return Path(cache or sdist_dir()) / f'{pkg}-{pin["version"]}.tar.gz'


def skip_cuda_env() -> Dict[str, str]:
    """Environment for pip steps that must not compile (metadata only)."""
    env = {}
    for pin in SDISTS.values():
        env[f'{pin["env_prefix"]}_FORCE_BUILD'] = 'TRUE'
        env[f'{pin["env_prefix"]}_SKIP_CUDA_BUILD'] = 'TRUE'
    return env


def fetch_sdist(pkg: str, cache: Optional[Path] = None) -> Path:
    """The pinned sdist of ``pkg`` in the cache, downloaded with pip if it
    is not there yet; its sha256 is checked. Raises RuntimeError saying
    what to do when it cannot be had."""
    pin, path = SDISTS[pkg], sdist_path(pkg, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        requirement = f'{pin["dist"]}=={pin["version"]}'
        # the sdists' metadata step runs setup.py; without these switches
        # it looks for CUDA / a prebuilt wheel
        cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps',
               '--no-binary', ':all:', '--no-build-isolation',
               '--disable-pip-version-check', '-q', '-d', str(path.parent),
               requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, **skip_cuda_env()),
                              timeout=600)
        if proc.returncode or not path.exists():
            tail = '\n'.join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(
                f'could not download the {requirement} sdist '
                f'({" ".join(cmd)}):\n{tail}\nPyPI must be reachable once, '
                f'or put {path.name} in {path.parent} (or point '
                f'{SDIST_DIR_ENV} at a directory that has it).')
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != pin['sha256']:
        raise RuntimeError(
            f'{path} has sha256 {digest}, expected {pin["sha256"]} '
            f'({pin["dist"]} {pin["version"]} from PyPI); delete it to '
            'download it again')
    return path


def unpacked_sources(cache: Optional[Path] = None) -> Dict[str, Path]:
    """{pkg: source root} with each package's .py files and csrc C++
    (.cpp/.h) unpacked from the pinned sdists (fetched if needed)."""
    cache = Path(cache or sdist_dir())
    roots = {}
    for pkg, pin in SDISTS.items():
        tarball = fetch_sdist(pkg, cache)
        stem = f'{pkg}-{pin["version"]}'
        root = cache / 'src' / stem
        if not (root / '.complete').exists():
            with tarfile.open(tarball) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and (
                    (m.name.startswith(f'{stem}/{pkg}/')
                     and m.name.endswith('.py'))
                    or (m.name.startswith(f'{stem}/csrc/')
                        and m.name.endswith(('.cpp', '.h'))))]
                _extract(tar, cache / 'src', members)
            (root / '.complete').touch()
        roots[pkg] = root
    return roots


def _extract(tar: tarfile.TarFile, dest: Path, members=None) -> None:
    try:
        tar.extractall(dest, members=members, filter='data')
    except TypeError:  # Python without extraction filters
        tar.extractall(dest, members=members)


# --------------------------------------------------------------------------
# building for one GPU
# --------------------------------------------------------------------------
_GENCODE_BLOCK = re.compile(
    r'(?P<indent>[ \t]*)cc_flag\.append\("-gencode"\)\n'
    r'(?:.*\n)*?'
    r'(?=[ \t]*\n[ \t]*\n|[ \t]*# HACK)')


def patch_cuda_archs(setup_py: str, capability: Tuple[int, int]) -> str:
    """``setup.py`` of mamba-ssm / causal-conv1d compiled for one GPU
    architecture only. Both hard-code ``-gencode`` flags for about nine
    architectures (``TORCH_CUDA_ARCH_LIST`` is ignored), which multiplies
    the build time; the block of ``cc_flag.append("-gencode")`` lines is
    replaced by the one for ``capability`` (e.g. (9, 0) -> sm_90). Raises
    ValueError if the block is not found (a new setup.py layout)."""
    match = _GENCODE_BLOCK.search(setup_py)
    if match is None or 'arch=compute_' not in match.group(0):
        raise ValueError('no cc_flag.append("-gencode") block found in '
                         'setup.py: cannot restrict the CUDA architectures')
    arch = f'{capability[0]}{capability[1]}'
    indent = match.group('indent')
    block = (f'{indent}cc_flag.append("-gencode")\n'
             f'{indent}cc_flag.append("arch=compute_{arch},code=sm_{arch}")'
             '\n')
    return setup_py[:match.start()] + block + setup_py[match.end():]


def build_command(pkg: str, source_dir: Path, capability: Tuple[int, int],
                  jobs: int) -> Tuple[list, Dict[str, str]]:
    """(pip command, extra environment) that builds and installs the
    unpacked, patched sdist in ``source_dir`` into the running Python,
    against its torch, offline and for ``capability`` only (the packages'
    Python dependencies are not installed: einops, triton, ... must be
    there)."""
    prefix = SDISTS[pkg]['env_prefix']
    cmd = [sys.executable, '-m', 'pip', 'install', '--no-build-isolation',
           '--no-deps', '--no-index', '--disable-pip-version-check',
           str(source_dir)]
    env = {f'{prefix}_FORCE_BUILD': 'TRUE', 'MAX_JOBS': str(jobs),
           'TORCH_CUDA_ARCH_LIST': f'{capability[0]}.{capability[1]}'}
    return cmd, env


def prepare_build(pkg: str, capability: Tuple[int, int], work: Path,
                  cache: Optional[Path] = None) -> Path:
    """Unpack the pinned sdist of ``pkg`` into ``work`` with its setup.py
    restricted to ``capability``; returns the source directory."""
    tarball = fetch_sdist(pkg, cache)
    with tarfile.open(tarball) as tar:
        _extract(tar, work)
    source = work / f'{pkg}-{SDISTS[pkg]["version"]}'
    setup_py = source / 'setup.py'
    setup_py.write_text(patch_cuda_archs(setup_py.read_text(), capability))
    return source
