"""Small helpers shared by the mixers."""
from torch import Tensor


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is half/bfloat16 (the SSM parameters A, D and
    the step bias always enter the scan in float32, as mamba-ssm's
    ``.float()`` calls do); float32/float64 stay as they are, so a float64
    model stays exact."""
    return t.float() if t.element_size() < 4 else t
