"""The one prepared call for a lent GPU machine: what mmvim's Triton
kernels and backbones do on the device, in order of value, within a time
budget. Run as ``python tools/gpu_check.py`` (one module per phase here):

    python tools/gpu_check.py --budget 480               # the GPU session
    python tools/gpu_check.py --device cpu --tiny --budget 120   # dry run

1 parity       Triton vs torch on the kernel calls of Vim-S, VMamba-T and
               MambaVision-T at 512, forward + backward, fp32 and bf16.
2 speed        Triton (and torch, and mamba-ssm when it imports) on those
               calls at 512 and 1024, forward and forward + backward.
3 backbones    the three backbones, forward + backward under bf16 autocast,
               triton against torch: differences and times.
4 vim_vs_deit  Vim-Ti vs DeiT-Ti feature extraction at 512 / 1024 / 1248
               against the Vim paper's 2.8x FPS and 86.8% memory saving.
5 throughput   VMamba-T and MambaVision-T at 224, batch 128, against their
               official img/s.
6 cuda         only if time remains: build mamba-ssm / causal-conv1d for
               this GPU from the carried sdists, compare triton with cuda.

``--budget S`` starts a phase only while time is left and interrupts it at
the deadline (rows measured so far are kept); the JSON report is written
after every phase. The Triton kernels run their default block sizes
(``MMVIM_TRITON_AUTOTUNE=0``, the configs tools/triton_aot.py compiles
without spills) unless ``--autotune``. Without the OpenMMLab stack (the
device image has none) mmvim is imported without it (imports.py).
``--device cpu`` runs the same phases with the Triton kernels in Triton's
interpreter; ``--tiny`` shrinks models and sizes. docs/triton.md says what
each figure means.
"""
from .main import PHASES, main, parse_args

__all__ = ['PHASES', 'main', 'parse_args']
