"""Sphinx configuration of mmvim's documentation site (``make docs``).

The pages are the markdown files of docs/ (read by MyST) and the API
reference under docs/api/ (autodoc + napoleon on mmvim's Google-style
docstrings). The build needs no network: no intersphinx, no remote images.
It imports mmvim and its OpenMMLab dependencies (installed by
``make install``); optional packages (CUDA kernels, Triton, ONNX) are
mocked, so the build does not need them.
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)  # the checkout's mmvim, also without an install


def _version() -> str:
    namespace: dict = {}
    with open(os.path.join(ROOT, 'mmvim', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


project = 'mmvim'
author = 'mmvim contributors'
copyright = 'mmvim contributors'
release = version = _version()

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.napoleon',
    'sphinx.ext.viewcode',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
root_doc = 'index'
exclude_patterns = ['_build']

# MyST: the existing pages link to '#section' anchors of each other
myst_heading_anchors = 3

# autodoc: members in source order, signatures from __init__, the shapes
# and parameters from the Google-style "Args:" / "Returns:" sections
autodoc_default_options = {
    'members': True,
    'member-order': 'bysource',
    'show-inheritance': True,
}
autoclass_content = 'class'
autodoc_class_signature = 'mixed'
autodoc_typehints = 'signature'
autodoc_preserve_defaults = True
# optional packages, imported only by the backends that need them
autodoc_mock_imports = [
    'mamba_ssm', 'selective_scan_cuda', 'causal_conv1d', 'causal_conv1d_cuda',
    'triton', 'onnx', 'onnxruntime', 'onnxscript',
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = 'furo'
html_title = f'mmvim {release}'
html_show_sourcelink = False
autodoc_inherit_docstrings = False  # no nn.Module.forward boilerplate
