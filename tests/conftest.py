import os

import pytest
import torch

# Backend selection is automatic in tests (CPU tensors -> torch backend);
# tests that need a specific backend set MMVIM_SCAN_BACKEND themselves.
os.environ['MMVIM_SCAN_BACKEND'] = 'auto'


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'gpu' in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
