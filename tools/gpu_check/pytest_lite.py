"""A pytest plugin that imports mmvim the way the GPU image allows (no
OpenMMLab stack: imports.py) before any test module does, so that the
Triton tests run there and in the triton-3.6 check of docs/triton.md:

    python -m pytest -p tools.gpu_check.pytest_lite tests/test_*_triton.py

Without CUDA it switches Triton's interpreter on first, as
tests/triton_interpret.py would: importing mmvim here imports triton, and
triton 3.6 fixes the mode of its own ``triton.language`` helpers then.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ['TRITON_INTERPRET'] = '1'

from .imports import load_mmvim  # noqa: E402

#: 'full' or 'lite': how mmvim was imported for this session
MODE = load_mmvim()


def pytest_report_header(config):
    return f'mmvim import: {MODE} (tools/gpu_check/imports.py)'
