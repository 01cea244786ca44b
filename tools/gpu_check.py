"""The first command on a lent GPU machine: ``python tools/gpu_check.py
--budget 480`` (the phases live in tools/gpu_check/, one module each; see
its ``__init__`` and docs/triton.md). Dry run on CPU:
``python tools/gpu_check.py --device cpu --tiny --budget 120``."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the repository root, not tools/, so that tools.gpu_check is the package
sys.path[:1] = [ROOT]

from tools.gpu_check import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
