"""The two-layer MLP of the hierarchical backbones (timm's ``Mlp`` names)."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from torch import Tensor


class Mlp(nn.Module):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout`` over the last dim.

    Args:
        in_features: input (and default output) channels.
        hidden_features: hidden channels (e.g. 4 * in_features).
        out_features: output channels; defaults to ``in_features``.
        drop: dropout after each layer.
    """

    def __init__(self, in_features: int, hidden_features: int,
                 out_features: Optional[int] = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
