"""MTCNN's three networks in PyTorch: the reference the ONNX files are checked against.

Only the converter and the tests import this module (it needs torch; detection itself does
not). Layer names match the keys of the state dicts shipped in the ``facenet-pytorch`` 2.6.0
wheel, so ``net.load_state_dict(weights)`` takes them unchanged.

Architecture (Zhang et al., arXiv:1604.02878, Fig. 2): 3x3 convolutions with PReLU, max
pooling with ceil rounding (Caffe's), and for R-Net and O-Net fully connected heads. The
trained weights came to PyTorch from a TensorFlow port of the Caffe models, whose dense
layers read the last feature map in (width, height, channel) order; :func:`caffe_flatten`
reproduces that order so the dense weights apply unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ONet", "PNet", "RNet", "caffe_flatten", "build_nets"]


def caffe_flatten(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, W * H * C)`` in (width, height, channel) order."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, a 12x12 window per output cell, stride 2.

    Returns ``(prob, reg)``: ``(N, 2, H', W')`` softmax over (background, face) and ``(N, 4, H', W')``
    box offsets as fractions of the 12-pixel window.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network on 24x24 crops: ``(prob (N, 2), reg (N, 4))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(caffe_flatten(x)))
        return torch.softmax(self.dense5_1(x), dim=1), self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: ``(prob (N, 2), reg (N, 4), points (N, 10))``.

    ``points`` are the five landmarks as fractions of the crop, all x first then all y.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(caffe_flatten(x)))
        return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)


def build_nets(weights: dict[str, dict[str, torch.Tensor]]) -> dict[str, nn.Module]:
    """``{"pnet": PNet, "rnet": RNet, "onet": ONet}`` in eval mode with ``weights[name]`` loaded (strict)."""
    nets: dict[str, nn.Module] = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    for name, net in nets.items():
        net.load_state_dict(weights[name], strict=True)
        net.eval()
    return nets
