"""Where the Triton kernel tests run: on a CUDA device when there is one
(the real kernels), otherwise on CPU tensors under Triton's interpreter.

The interpreter is chosen by ``TRITON_INTERPRET=1`` when triton decorates a
kernel, so this module sets it on machines without CUDA when it is imported,
which pytest does while collecting, before any test runs (and before
anything imports mmvim's Triton kernels: ``import mmvim`` never does).
"""
import importlib.util
import os

import pytest
import torch

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
if DEVICE == 'cpu':
    os.environ['TRITON_INTERPRET'] = '1'

HAVE_TRITON = importlib.util.find_spec('triton') is not None
SKIP_REASON = ('triton is not installed (`pip install triton`; the dev extra '
               'that `make install` installs has it)')


def require_triton() -> None:
    """Skip without triton; fail if the kernels were loaded in the wrong
    mode for DEVICE (imported before this module set TRITON_INTERPRET)."""
    if not HAVE_TRITON:
        pytest.skip(SKIP_REASON)
    from mmvim.ops import _triton_utils
    if _triton_utils.INTERPRET != (DEVICE == 'cpu'):
        pytest.fail('mmvim.ops._triton_utils was imported before '
                    'tests/triton_interpret.py set TRITON_INTERPRET; import '
                    'this module first')
