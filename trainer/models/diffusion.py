"""Gaussian diffusion for DiT on TexTok tokens: training loss and DDPM / DDIM samplers.

The model follows improved DDPM (Nichol & Dhariwal 2021) as DiT uses it: a 1000-step linear
beta schedule (1e-4 -> 0.02), the network predicts eps and, with learned variance, a value
v in [-1, 1] interpolating log-variance between beta_t and the posterior beta~_t. The loss is
eps-MSE + the variational bound term (lambda = 1) computed with a stop-gradient on the mean,
so the VLB trains only the variance (improved DDPM Sec. 3.1, "L_hybrid").

    from textok.trainer.models.diffusion import GaussianDiffusion, sample
    diffusion = GaussianDiffusion.linear()                       # 1000 steps
    losses = diffusion.training_losses(model, z0, {"y": labels})  # dict of per-sample [B]
    losses["loss"].mean().backward()
    z = sample(model.guided(4.0, y=labels), (B, N, 8), steps=250, sampler="ddpm",
               generator=torch.Generator().manual_seed(0))

Samplers run on a respaced chain: S timesteps kept from the 1000, betas recomputed from the
kept alpha-bar (beta_i = 1 - abar_{k_i} / abar_{k_{i-1}}), the model called with the original
timestep indices. All schedule arithmetic is float64; tensors handed to the model follow x.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    # Ho et al. (2020) defined 1e-4..0.02 for 1000 steps; scale it so other lengths match (iDDPM).
    scale = 1000 / num_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_nll(x, mean, logvar) -> torch.Tensor:
    """-log N(x; mean, e^logvar), elementwise, in nats.

    improved DDPM uses a discretised likelihood at t = 0 because pixels are 8-bit; TexTok
    latents are continuous, so the decoder term is the continuous Gaussian density.
    """
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


class GaussianDiffusion:
    def __init__(self, betas: torch.Tensor, learn_sigma: bool = True, timestep_map: torch.Tensor | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1D tensor with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.learn_sigma = learn_sigma
        # Index of each step in the original chain: what the model was trained on.
        self.timestep_map = torch.arange(self.num_timesteps) if timestep_map is None else timestep_map
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta~_0 = 0: use beta~_1 for the log so it stays finite (iDDPM does the same).
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    @classmethod
    def linear(cls, num_steps: int = 1000, learn_sigma: bool = True) -> "GaussianDiffusion":
        return cls(linear_betas(num_steps), learn_sigma=learn_sigma)

    def respaced(self, steps: int) -> "GaussianDiffusion":
        """The same process on `steps` evenly spaced timesteps (first and last kept)."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"sampling steps must be in [1, {self.num_timesteps}], got {steps}")
        kept = torch.linspace(0, self.num_timesteps - 1, steps, dtype=torch.float64).round().long()
        abar = self.alphas_cumprod[kept]
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return GaussianDiffusion(1.0 - abar / abar_prev, self.learn_sigma, self.timestep_map[kept])

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped [B, 1, ...] to broadcast against `like`, in its dtype/device."""
        out = values.to(t.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    # ---- forward process ----------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        signal, sigma = self._at(self.sqrt_alphas_cumprod, t, x0), self._at(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return signal * x0 + sigma * noise

    def q_posterior(self, x0, x_t, t):
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)

    # ---- reverse process ----------------------------------------------------------------
    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> dict:
        """Mean / log-variance of p(x_{t-1} | x_t) from the raw model output (t = index in this chain)."""
        d = x_t.shape[-1]
        if self.learn_sigma:
            if model_out.shape[-1] != 2 * d:
                raise ValueError(f"learn_sigma expects the model to output {2 * d} channels, got {model_out.shape[-1]}")
            eps, v = model_out[..., :d], model_out[..., d:]
            frac = (v + 1) / 2  # v in [-1, 1] -> interpolate between log beta~_t and log beta_t
            log_min = self._at(self.posterior_log_variance_clipped, t, x_t)
            log_max = self._at(torch.log(self.betas), t, x_t)
            log_var = frac * log_max + (1 - frac) * log_min
        else:
            if model_out.shape[-1] != d:
                raise ValueError(f"fixed variance expects {d} output channels, got {model_out.shape[-1]}")
            eps = model_out
            # DDPM's "fixed large" choice: beta_t, with beta~_1 at t=0 for a sane decoder.
            large = torch.log(torch.cat([self.posterior_variance[1:2], self.betas[1:]]))
            log_var = self._at(large, t, x_t).expand_as(x_t)
        pred_x0 = (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                   - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "log_variance": log_var, "pred_x0": pred_x0, "eps": eps}

    def _call(self, model_fn: ModelFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model_fn(x, self.timestep_map.to(t.device)[t])

    # ---- training -----------------------------------------------------------------------
    def training_losses(self, model, x0: torch.Tensor, model_kwargs: dict | None = None,
                        t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample losses [B]: "loss" = "mse" (+ "vb" when the variance is learned).

        vb is in bits per dimension; at t = 0 it is the decoder NLL, elsewhere the KL to the
        true posterior. The mean is detached inside vb so the VLB only trains the variance.
        """
        B = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (B,), device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        out = self._call(lambda x, tt: model(x, tt, **(model_kwargs or {})), x_t, t)
        d = x0.shape[-1]
        terms = {"mse": mean_flat((noise - out[..., :d]) ** 2)}
        if self.learn_sigma:
            frozen = torch.cat([out[..., :d].detach(), out[..., d:]], dim=-1)
            p = self.p_mean_variance(frozen, x_t, t)
            true_mean, true_logvar = self.q_posterior(x0, x_t, t)
            kl = mean_flat(normal_kl(true_mean, true_logvar, p["mean"], p["log_variance"])) / math.log(2.0)
            nll = mean_flat(gaussian_nll(x0, p["mean"], p["log_variance"])) / math.log(2.0)
            terms["vb"] = torch.where(t == 0, nll, kl)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    # ---- sampling -----------------------------------------------------------------------
    def ddpm_step(self, model_fn: ModelFn, x, i: int, generator=None):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        p = self.p_mean_variance(self._call(model_fn, x, t), x, t)
        if i == 0:
            return p["mean"]
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise

    def ddim_step(self, model_fn: ModelFn, x, i: int, eta: float = 0.0, generator=None):
        """Song et al. (2021) eq. 12; eta = 0 is deterministic, eta = 1 matches DDPM's variance."""
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        p = self.p_mean_variance(self._call(model_fn, x, t), x, t)
        abar, abar_prev = self._at(self.alphas_cumprod, t, x), self._at(self.alphas_cumprod_prev, t, x)
        sigma = eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).sqrt()
        mean = p["pred_x0"] * abar_prev.sqrt() + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * p["eps"]
        if i == 0 or eta == 0:
            return mean
        return mean + sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)

    def sample_loop(self, model_fn: ModelFn, shape, sampler: str = "ddpm", eta: float = 0.0,
                    generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                    device: str | torch.device | None = None, progress: bool = False) -> torch.Tensor:
        """Run this chain from x_T ~ N(0, I) (or `noise`) to x_0."""
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if device is None:
            device = generator.device if generator is not None else "cpu"
        x = noise.to(device) if noise is not None else torch.randn(shape, device=device, generator=generator)
        steps = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from textok.progress import progress as counted

            steps = counted(steps, f"{sampler} x{self.num_timesteps}", unit="steps")
        with torch.no_grad():
            for i in steps:
                if sampler == "ddpm":
                    x = self.ddpm_step(model_fn, x, i, generator)
                else:
                    x = self.ddim_step(model_fn, x, i, eta, generator)
        return x


def diffusion_for(cfg) -> GaussianDiffusion:
    """The training chain of a DiT from its config (learn_sigma, diffusion_steps, noise_schedule):
    what `train-dit` trains on and `sample` must sample from."""
    schedule = getattr(cfg, "noise_schedule", "linear")
    if schedule != "linear":
        raise ValueError(f"noise_schedule={schedule!r}: only 'linear' (DDPM, Ho et al. 2020) is implemented")
    return GaussianDiffusion.linear(cfg.diffusion_steps, learn_sigma=cfg.learn_sigma)


def sample(model_fn: ModelFn, shape, steps: int = 250, sampler: str = "ddpm",
           generator: torch.Generator | None = None, progress: bool = False, eta: float = 0.0,
           diffusion: GaussianDiffusion | None = None, noise: torch.Tensor | None = None,
           device: str | torch.device | None = None) -> torch.Tensor:
    """Sample x_0 [shape] with `steps` respaced steps of the 1000-step linear chain (or `diffusion`).

    model_fn(x, t) returns the raw model output for original-chain timesteps t, e.g.
    `DiT.guided(cfg_scale, y=labels)`; the result is deterministic for a seeded generator.
    x_T is drawn on `device` (default: the generator's device, else CPU).
    """
    chain = (diffusion or GaussianDiffusion.linear()).respaced(steps)
    return chain.sample_loop(model_fn, shape, sampler=sampler, eta=eta, generator=generator,
                             noise=noise, device=device, progress=progress)
