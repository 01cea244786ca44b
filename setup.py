"""mmvim: Mamba vision backbones (Vim, VMamba, MambaVision) for OpenMMLab.

Install with ``make install`` (creates .venv and handles the mmcv build), or
``pip install --no-build-isolation -e .[dev]`` into an environment that already
has torch. The ``[cuda]`` extra adds the mamba-ssm / causal-conv1d kernels and
must be built against an installed CUDA torch (``--no-build-isolation``).

The C++ CPU selective scan (``mmvim._ext``, sources in ``mmvim/csrc``) is
built here with torch's cpp_extension when torch and a C++ compiler are
present. It is optional: if it cannot be built, the install still succeeds,
says why, and mmvim runs the pure-PyTorch scan. ``MMVIM_NO_EXT=1`` skips it.

Next to it the same kernels are built into ``mmvim/libmmvim_ort_ops.so``, an
onnxruntime custom-op library (``mmvim.ai::SelectiveScan``, sources in
``mmvim/csrc/ort``) for ONNX files exported with ``--scan-op mmvim``
(docs/deploy.md). It needs neither torch nor onnxruntime to build or load
(onnxruntime hands it its API table); it is optional in the same way and
skipped by ``MMVIM_NO_EXT=1`` too.
"""
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CSRC = 'mmvim/csrc'
NO_EXT_MESSAGE = (
    'mmvim: the C++ CPU selective scan (mmvim._ext) was NOT built ({why}). '
    'mmvim is installed and runs the slower pure-PyTorch scan on CPU. To '
    'build the kernel, install a C++ compiler (e.g. g++) and rerun '
    '`make install`.')


# onnxruntime custom-op library (docs/deploy.md); mmvim.deploy.ort_ops
# finds it under this name next to mmvim/__init__.py
ORT_LIBRARY = 'libmmvim_ort_ops.so'
NO_ORT_MESSAGE = (
    'mmvim: the onnxruntime custom-op library (mmvim/' + ORT_LIBRARY + ') was '
    'NOT built ({why}). mmvim is installed; ONNX files exported with the '
    'default standard-operator scan run anywhere, files exported with '
    '--scan-op mmvim need this library. To build it, install a C++ compiler '
    '(e.g. g++) and rerun `make install`.')


def _banner(message: str) -> None:
    line = '=' * 78
    print(f'\n{line}\n{message}\n{line}\n', file=sys.stderr, flush=True)


def extension_build():
    """(ext_modules, cmdclass) for mmvim._ext, or nothing when it cannot be
    built. The build never fails the install."""
    if os.environ.get('MMVIM_NO_EXT') == '1':
        _banner(NO_EXT_MESSAGE.format(why='MMVIM_NO_EXT=1'))
        _banner(NO_ORT_MESSAGE.format(why='MMVIM_NO_EXT=1'))
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch missing or broken
        _banner(NO_EXT_MESSAGE.format(why=f'torch is not importable: {exc}'))
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """torch's BuildExtension, but a failed build (no compiler, a
        compiler error) is reported instead of failing the install."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:
                _banner(NO_EXT_MESSAGE.format(
                    why=f'{type(exc).__name__}: {exc}'))
            try:
                built = build_ort_library(Path(self.build_temp),
                                          Path(self.build_lib) / 'mmvim')
                if self.inplace:  # editable install / build_ext --inplace
                    shutil.copy2(built, ROOT / 'mmvim' / ORT_LIBRARY)
            except Exception as exc:
                _banner(NO_ORT_MESSAGE.format(
                    why=f'{type(exc).__name__}: {exc}'))

    # -O3 and FMA contraction for the kernels; -g0 keeps the build short.
    # The kernels for wider instruction sets (AVX2, AVX-512) are compiled
    # via target pragmas in their own sources and chosen at run time after
    # a cpuid check, so no -march flag is needed and the build is portable.
    cxx = ['-O3', '-g0', '-ffp-contract=fast', '-Wno-psabi']
    link = []
    if sys.platform.startswith('linux'):
        # at::parallel_for runs on torch's OpenMP pool only when the
        # extension itself is compiled with OpenMP
        cxx.append('-fopenmp')
        link.append('-fopenmp')
    ext = CppExtension(
        'mmvim._ext',
        sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC).glob('*.cpp')),
        extra_compile_args={'cxx': cxx}, extra_link_args=link)
    return [ext], {'build_ext': OptionalBuildExtension}


def build_ort_library(temp: Path, out_dir: Path) -> Path:
    """Compile mmvim/csrc/ort and the kernels (scan_isa_*.cpp) into
    ``out_dir``/libmmvim_ort_ops.so with the C++ compiler ($CXX, else c++),
    the sources in parallel; returns the library's path. A plain shared
    library: no torch, Python or onnxruntime symbols are linked."""
    cxx = os.environ.get('CXX', 'c++')
    flags = ['-O3', '-g0', '-ffp-contract=fast', '-Wno-psabi', '-std=c++17',
             '-fPIC', '-fvisibility=hidden']
    sources = sorted((ROOT / CSRC).glob('scan_isa_*.cpp')) + \
        sorted((ROOT / CSRC / 'ort').glob('*.cpp'))
    temp = temp / 'ort_ops'
    temp.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    def compile_one(src: Path) -> Path:
        obj = temp / (src.stem + '.o')
        subprocess.run([cxx, *flags, '-c', str(src), '-o', str(obj)],
                       check=True, capture_output=True, text=True)
        return obj

    jobs = int(os.environ.get('MAX_JOBS') or os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            objects = list(pool.map(compile_one, sources))
        out = out_dir / ORT_LIBRARY
        subprocess.run([cxx, '-shared', *map(str, objects), '-o', str(out)],
                       check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as err:  # the compiler's own words
        tail = (err.stderr or err.stdout or '').strip().splitlines()[-5:]
        raise RuntimeError(' / '.join(tail) or str(err)) from None
    print(f'mmvim: built the onnxruntime custom-op library {out}',
          file=sys.stderr)
    return out


EXT_MODULES, CMDCLASS = extension_build()


def read_version() -> str:
    namespace: dict = {}
    exec((ROOT / 'mmvim' / 'version.py').read_text(), namespace)
    return namespace['__version__']


# --- mmvim::configs/... names (see mmvim/config_names.py) and mim ---------
# As mmseg and mmdet do, the repository's configs/ and tools/ ship inside the
# package as mmvim/.mim/{configs,tools}, with model-index.yml (the index of
# the configs' metafiles that `mim search` reads): copied into a wheel,
# symlinked into the source tree by an editable install (for mim, see
# scripts/setup_env.sh). mmvim-config-names.pth lets plain mmengine read
# mmvim:: bases without `import mmvim`.
MIM_DIRS = ('configs', 'tools')
MIM_FILES = ('model-index.yml',)


def add_mim_files(package_dir: Path, symlink: bool) -> None:
    """Put configs/, tools/ and model-index.yml into ``package_dir``/.mim
    (symlinks or copies)."""
    mim = package_dir / '.mim'
    mim.mkdir(parents=True, exist_ok=True)
    for name in MIM_DIRS + MIM_FILES:
        src, dst = ROOT / name, mim / name
        if not src.exists():
            raise FileNotFoundError(
                f'{src} is missing: build mmvim from a full checkout (its '
                'configs ship in the package).')
        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        elif dst.is_dir():
            shutil.rmtree(dst)
        if symlink:
            try:
                dst.symlink_to(os.path.relpath(src, mim),
                               target_is_directory=src.is_dir())
                continue
            except OSError:  # no symlinks (Windows without privilege)
                pass
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(
                '__pycache__', '*.pyc'))
        else:
            shutil.copy2(src, dst)


class BuildPyWithMim(build_py):
    """build_py plus mmvim/.mim and mmvim-config-names.pth."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # pip install -e: the wheel holds no package
            add_mim_files(ROOT / 'mmvim', symlink=True)
            site_dir = self.get_finalized_command('install').install_lib
        else:
            add_mim_files(Path(self.build_lib) / 'mmvim', symlink=False)
            site_dir = self.build_lib
        # the line is defined next to the hook it starts (stdlib-only file)
        names: dict = {}
        exec((ROOT / 'mmvim' / 'config_names.py').read_text(), names)
        Path(site_dir, names['PTH_NAME']).write_text(names['PTH_LINE'])


# ONNX export and onnxruntime inference (docs/deploy.md); tested with
# onnx 1.23, onnxscript 0.7, onnxruntime 1.32 and torch 2.13.
DEPLOY_REQUIRES = ['onnx>=1.17', 'onnxscript>=0.5', 'onnxruntime>=1.20']
# `make docs`: Sphinx with MyST (docs/ stays markdown) and the furo theme.
DOCS_REQUIRES = ['sphinx>=7.2', 'myst-parser>=2', 'furo>=2024.1']
# openmim's requirements without opendatalab: openmim 0.3.9 requires
# opendatalab -> openxlab, which pins setuptools 60.2 (outside the
# >=77,<82 above), requests 2.28, rich 13.4 and more, and which only
# `mim download --dataset` runs (as a command). scripts/setup_env.sh
# installs openmim itself with --no-deps next to these ([mim], [dev]).
MIM_REQUIRES = ['model-index', 'pandas', 'click', 'colorama', 'rich',
                'requests', 'tabulate']

setup(
    name='mmvim',
    version=read_version(),
    description='Mamba vision backbones (Vim, VMamba, MambaVision) for '
    'OpenMMLab dense prediction',
    long_description=(ROOT / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['mmvim', 'mmvim.*']),
    include_package_data=True,
    install_requires=[
        # Any torch >= 2.1 is kept as installed (a CUDA build, say); on a
        # bare CPU machine scripts/setup_env.sh installs torch==2.13.0 first.
        'torch>=2.1',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmdet==3.3.0',
        'mmsegmentation==1.2.2',
        'ftfy',
        'regex',
        # pkg_resources (gone in setuptools 82) is needed by mmengine to
        # resolve mmseg::/mmdet:: base configs.
        'setuptools>=77,<82',
        'numpy',
        'matplotlib',
    ],
    extras_require={
        'cuda': ['mamba-ssm>=2.2', 'causal-conv1d>=1.4'],
        'deploy': DEPLOY_REQUIRES,
        'docs': DOCS_REQUIRES,
        'mim': MIM_REQUIRES,
        # einops: imported by mamba-ssm's selective_scan_interface, which
        # the CUDA glue contract test runs on CPU (tests/cuda_glue_standins.py)
        # triton: the Triton kernels' tests run them on CPU under Triton's
        # interpreter (CUDA builds of torch already ship triton; >=3.1 keeps
        # the GPU machines' torch-bundled 3.6)
        # selenium: the docs test drives the system's Chromium (no browser
        # download; it skips without one)
        'dev': ['pytest>=7', 'pytest-xdist>=3', 'ruff>=0.4', 'pycocotools', 'einops',
                'triton>=3.1; platform_system == "Linux"',
                'selenium>=4.11', *DEPLOY_REQUIRES, *DOCS_REQUIRES,
                *MIM_REQUIRES],
    },
    ext_modules=EXT_MODULES,
    cmdclass={**CMDCLASS, 'build_py': BuildPyWithMim},
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
