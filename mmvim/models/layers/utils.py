"""Small helpers shared by the mixers."""
import torch
import torch.nn as nn
from torch import Tensor


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is half/bfloat16 (the SSM parameters A, D and
    the step bias always enter the scan in float32, as mamba-ssm's
    ``.float()`` calls do); float32/float64 stay as they are, so a float64
    model stays exact."""
    return t.float() if t.element_size() < 4 else t


def linear_channels_first(x: Tensor, linear: nn.Linear) -> Tensor:
    """``linear(x).transpose(1, 2)`` as a contiguous tensor: tokens
    (B, L, C_in) -> (B, C_out, L), as mamba-ssm computes its in_proj
    (``weight @ x^T``). One batched matmul writes the channels-first layout
    that the convs and the scan read; the transposed view of ``linear(x)``
    would be copied element by element later (torch.matmul of a 2-D weight
    and a 3-D input also returns such a view). The same numbers as
    ``linear(x)`` on CPU, bit for bit."""
    out = torch.bmm(linear.weight.expand(x.shape[0], -1, -1),
                    x.transpose(1, 2))
    if linear.bias is not None:
        out = out + linear.bias.to(out.dtype).unsqueeze(-1)
    return out
