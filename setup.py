"""mmvim: Mamba vision backbones (Vim, VMamba, MambaVision) for OpenMMLab.

Install with ``make install`` (creates .venv and handles the mmcv build), or
``pip install --no-build-isolation -e .[dev]`` into an environment that already
has torch. The ``[cuda]`` extra adds the mamba-ssm / causal-conv1d kernels and
must be built against an installed CUDA torch (``--no-build-isolation``).
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    namespace: dict = {}
    exec((ROOT / 'mmvim' / 'version.py').read_text(), namespace)
    return namespace['__version__']


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
        # einops: imported by mamba-ssm's selective_scan_interface, which
        # the CUDA glue contract test runs on CPU (tests/cuda_glue_standins.py)
        'dev': ['pytest>=7', 'ruff>=0.4', 'pycocotools', 'einops'],
    },
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
