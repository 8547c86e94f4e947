"""StyleGAN2-style discriminator for the tokenizer's adversarial loss (Karras et al. 2020, "resnet" D).

    from textok.trainer.models.discriminator import DiscriminatorConfig, StyleGANDiscriminator
    D = StyleGANDiscriminator(DiscriminatorConfig(image_size=256))      # ~24M params, the paper's size
    logits = D(images)                                                  # [B,3,256,256] -> [B]

Layout: 1x1 "fromRGB" conv, then one residual block per resolution from image_size down to 8
(3x3 conv, blurred stride-2 3x3 conv; skip = blurred stride-2 1x1 conv; sum scaled by 1/sqrt(2)),
then at 4x4: minibatch-stddev channel, 3x3 conv, dense, dense -> one logit. Leaky ReLU(0.2)
with a sqrt(2) gain and equalised learning rate (weights ~ N(0,1), scaled by 1/sqrt(fan_in) at
run time), as in StyleGAN2, so Adam sees every layer at the same scale.
Channels at resolution r: min(channel_base // r, channel_max); channel_base = 16384 at 256 px
gives 64,128,256,512,512,512 and 23.9M parameters, matching the paper's "~24M" StyleGAN D.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class DiscriminatorConfig:
    image_size: int = 256
    channel_base: int = 16384
    channel_max: int = 512
    # optional override: one multiplier per resolution image_size, image_size/2, ..., 4, applied
    # to channel_base // image_size (the width at full resolution), then capped at channel_max
    channel_multipliers: tuple | None = None
    mbstd_group: int = 4

    def __post_init__(self):
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"DiscriminatorConfig.image_size={self.image_size}: must be a power of two >= 8")
        if self.channel_multipliers is not None:
            self.channel_multipliers = tuple(self.channel_multipliers)
            if len(self.channel_multipliers) != self.num_resolutions:
                raise ValueError(f"DiscriminatorConfig.channel_multipliers has {len(self.channel_multipliers)} "
                                 f"entries; image_size={self.image_size} needs {self.num_resolutions} "
                                 f"(one per resolution {self.resolutions})")

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(2 ** i for i in range(int(math.log2(self.image_size)), 1, -1))  # image_size .. 4

    @property
    def num_resolutions(self) -> int:
        return len(self.resolutions)

    def channels(self, res: int) -> int:
        if self.channel_multipliers is None:
            c = self.channel_base // res
        else:
            c = (self.channel_base // self.image_size) * self.channel_multipliers[self.resolutions.index(res)]
        return max(1, min(int(c), self.channel_max))


class EqualConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.gain = 1 / math.sqrt(c_in * kernel * kernel)
        self.stride, self.padding = stride, padding

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


class EqualLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.gain = 1 / math.sqrt(c_in)

    def forward(self, x):
        return F.linear(x, self.weight * self.gain, self.bias)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    # sqrt(2) keeps the activation variance of a leaky ReLU(0.2) near 1 (StyleGAN2 "lrelu" gain)
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class Blur(nn.Module):
    """Depthwise [1,3,3,1] outer-product low-pass filter before striding, against aliasing."""

    def __init__(self, channels: int, pad: int, stride: int = 1):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = torch.outer(k, k)
        self.register_buffer("kernel", (k / k.sum()).expand(channels, 1, 4, 4).clone(), persistent=False)
        self.pad, self.stride, self.channels = pad, stride, channels

    def forward(self, x):
        x = F.pad(x, (self.pad,) * 4)
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)


class DownBlock(nn.Module):
    """Residual block: [B,c_in,r,r] -> [B,c_out,r/2,r/2]."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1 = EqualConv2d(c_in, c_in, 3, padding=1)
        self.blur = Blur(c_in, pad=2)  # r -> r+1, so the valid stride-2 3x3 conv lands on r/2
        self.conv2 = EqualConv2d(c_in, c_out, 3, stride=2)
        self.skip_blur = Blur(c_in, pad=1, stride=2)  # r -> r/2
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        y = lrelu(self.conv2(self.blur(lrelu(self.conv1(x)))))
        return (y + self.skip(self.skip_blur(x))) / math.sqrt(2)


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one channel: the std of features across a group of samples (StyleGAN), which lets D
    spot a generator that produces too little variety. The group is the largest divisor of the
    batch not above `group`, so any batch size works."""
    B, C, H, W = x.shape
    G = max(g for g in range(1, min(group, B) + 1) if B % g == 0)
    y = x.float().view(G, B // G, C, H, W)
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [B/G]
    y = y.view(1, B // G, 1, 1, 1).expand(G, -1, 1, H, W).reshape(B, 1, H, W)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class StyleGANDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        res = cfg.resolutions  # image_size, ..., 8, 4
        self.from_rgb = EqualConv2d(3, cfg.channels(res[0]), 1)
        self.blocks = nn.ModuleList(DownBlock(cfg.channels(r), cfg.channels(r // 2)) for r in res[:-1])
        c4 = cfg.channels(4)
        self.conv = EqualConv2d(c4 + 1, c4, 3, padding=1)
        self.fc = EqualLinear(c4 * 16, c4)
        self.out = EqualLinear(c4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        if images.shape[1:] != (3, s, s):
            raise ValueError(f"discriminator expects [B,3,{s},{s}] (DiscriminatorConfig.image_size={s}), "
                             f"got {tuple(images.shape)}")
        x = lrelu(self.from_rgb(images))  # [B,C,s,s]
        for block in self.blocks:
            x = block(x)  # halves the resolution, down to 4x4
        x = lrelu(self.conv(minibatch_stddev(x, self.cfg.mbstd_group)))  # [B,C4,4,4]
        x = lrelu(self.fc(x.flatten(1)))
        return self.out(x).squeeze(1)  # [B]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
