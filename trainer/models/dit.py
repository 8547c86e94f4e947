"""DiT over TexTok's 1D latent tokens: class-conditional and text-to-image (DiT-T2I).

TexTok (Zha et al., CVPR 2025, Sec. 4) trains a DiT on the N x d latent tokens with patch
size 1: every token is one "patch". This is the DiT of Peebles & Xie (2023) with a 1D
sequence instead of a 2D patch grid. DiT-T2I adds one cross-attention layer per block over
the (padded, masked) T5 text tokens and drops the class embedding.

    from textok.trainer.models.dit import DiT, dit_config
    model = DiT(dit_config("B", num_tokens=32))                      # class-conditional
    out = model(z_t, t, y=labels)                                    # [B, N, 2d]
    t2i = DiT(dit_config("B", num_tokens=32, t2i=True, text_dim=2048))
    out = t2i(z_t, t, text_emb=emb, text_mask=mask)                  # mask: True = real token
    eps_guided = model.forward_with_cfg(z_t, t, y=labels, cfg_scale=4.0)
    model.save_pretrained("runs/dit/final"); DiT.from_pretrained("runs/dit/final")   # or a hub id

Shapes: B batch, N tokens, d token_dim, W width, L text tokens, D text_dim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from textok.trainer.models.hub import LATENT_STATS_FILE, TEXT_ENCODER_FILE, TRAINING_FILE, HubModel

MODEL_TYPE = "textok-dit"
NOISE_SCHEDULES = ("linear",)  # trainer.models.diffusion.linear_betas


@dataclass
class DiTConfig:
    num_tokens: int  # N latent tokens from the TexTok tokenizer
    token_dim: int = 8  # d, TexTok's latent channel count
    width: int = 1152
    depth: int = 28
    heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout: float = 0.1  # label -> null class with this probability in training (CFG)
    learn_sigma: bool = True  # output [eps ; variance interpolation] as in improved DDPM / DiT
    # The diffusion the DiT was trained on, saved with it so sampling rebuilds the same chain
    # (trainer.models.diffusion.diffusion_for): timesteps T and the beta schedule.
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    t2i: bool = False  # text-conditioned (cross-attention) instead of class-conditioned
    text_dim: int = 2048  # T5-XL d_model; 4096 for T5-XXL
    max_text_tokens: int = 128
    text_dropout: float = 0.1  # text -> learned null embedding with this probability (CFG)
    pos_embed: str = "sincos"  # "sincos" (fixed, as DiT) or "learned"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"DiTConfig: width={self.width} is not divisible by heads={self.heads}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"DiTConfig: pos_embed={self.pos_embed!r}; expected 'sincos' or 'learned'")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"DiTConfig: noise_schedule={self.noise_schedule!r}; expected one of {NOISE_SCHEDULES}")
        if self.diffusion_steps < 1:
            raise ValueError(f"DiTConfig: diffusion_steps={self.diffusion_steps} must be >= 1")
        if self.num_tokens < 1 or self.token_dim < 1:
            raise ValueError(f"DiTConfig: num_tokens={self.num_tokens}, token_dim={self.token_dim} must be >= 1")

    @property
    def out_dim(self) -> int:
        return 2 * self.token_dim if self.learn_sigma else self.token_dim


# Sizes follow DiT Table 1 (S/B/L/XL); `tiny` is for tests and CPU demos.
DIT_PRESETS: dict[str, dict] = {
    "tiny": dict(width=64, depth=2, heads=4),
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
    "XL": dict(width=1152, depth=28, heads=16),
}


def dit_config(preset: str, **overrides) -> DiTConfig:
    """A DiTConfig from a named size preset; `num_tokens` (and anything else) via overrides."""
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; choose one of {sorted(DIT_PRESETS)}")
    if "num_tokens" not in overrides:
        raise ValueError("dit_config needs num_tokens=N (the TexTok token count the DiT models)")
    return DiTConfig(**{**DIT_PRESETS[preset], **overrides})


def sincos_pos_embed(num_tokens: int, width: int) -> torch.Tensor:
    """Fixed 1D sine-cosine position embedding [N, W] (Transformer / MAE style)."""
    half = width // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(num_tokens, dtype=torch.float64)[:, None] * omega[None]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if width % 2:  # odd width: pad one zero channel
        emb = F.pad(emb, (0, 1))
    return emb.float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    """Scalar timestep -> W via sinusoidal features and an MLP (DiT / ADM)."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head attention through scaled_dot_product_attention; self- or cross-attention."""

    def __init__(self, width: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_dim or width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, W = x.shape
        context = x if context is None else context
        q = self.q(x).view(B, N, self.heads, -1).transpose(1, 2)  # [B, h, N, W/h]
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, L], True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, W))


class DiTBlock(nn.Module):
    """adaLN-Zero block; T2I adds cross-attention to the text between self-attention and MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        W = cfg.width
        self.norm1 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(W, cfg.heads)
        self.cross = None
        if cfg.t2i:
            # PixArt-alpha style: a plain pre-norm residual cross-attention (not modulated by t).
            self.norm_cross = nn.LayerNorm(W, eps=1e-6)
            self.cross = Attention(W, cfg.heads)
        self.norm2 = nn.LayerNorm(W, elementwise_affine=False, eps=1e-6)
        hidden = int(W * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(W, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, W))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(W, 6 * W))

    def forward(self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)  # each [B, W]
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), text, text_mask)
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.width, elementwise_affine=False, eps=1e-6)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.linear = nn.Linear(cfg.width, cfg.out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module, HubModel):
    """Tokens [B, N, d] -> (eps ; variance) [B, N, 2d]. The adaLN condition c is t + class
    embedding (class-conditional) or t alone (T2I, where text enters by cross-attention).
    save_pretrained / from_pretrained(path or hub id, revision=) / push_to_hub: trainer/models/hub.py."""

    config_class, model_type = DiTConfig, MODEL_TYPE
    SIDE_FILES = (LATENT_STATS_FILE, TEXT_ENCODER_FILE, TRAINING_FILE)

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        W = cfg.width
        self.x_embed = nn.Linear(cfg.token_dim, W)  # "patch size 1" over the token sequence
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos", sincos_pos_embed(cfg.num_tokens, W)[None], persistent=False)
        else:
            self.pos = nn.Parameter(torch.zeros(1, cfg.num_tokens, W))
        self.t_embed = TimestepEmbedder(W)
        if cfg.t2i:
            self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, W), nn.GELU(approximate="tanh"), nn.Linear(W, W))
            # Dropped captions become one learned "null" token (the rest masked out): the
            # unconditional branch of classifier-free guidance.
            self.null_text = nn.Parameter(torch.zeros(1, W))
        else:
            self.y_embed = nn.Embedding(cfg.num_classes + 1, W)  # index num_classes = null class
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def _basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic)
        if self.cfg.pos_embed == "learned":
            with torch.no_grad():
                self.pos.copy_(sincos_pos_embed(self.cfg.num_tokens, self.cfg.width)[None])
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        if self.cfg.t2i:
            nn.init.normal_(self.null_text, std=0.02)
        else:
            nn.init.normal_(self.y_embed.weight, std=0.02)
        # adaLN-Zero (DiT Sec. 3.2): zero gates make every block the identity at init; the
        # ungated cross-attention gets a zero output projection for the same effect.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
            if block.cross is not None:
                nn.init.zeros_(block.cross.proj.weight)
                nn.init.zeros_(block.cross.proj.bias)
        for layer in (self.final.adaLN[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---- conditioning -------------------------------------------------------------------
    def _drop_mask(self, B: int, device, drop: torch.Tensor | None, p: float) -> torch.Tensor | None:
        """Which samples use the null condition: given explicitly, or random in training."""
        if drop is not None:
            return drop.to(device=device, dtype=torch.bool)
        if self.training:
            # an all-False mask rather than None when p = 0: the null condition then stays in the
            # graph (zero gradient), as DDP needs every parameter to get a gradient each step
            return torch.rand(B, device=device) < p if p > 0 else torch.zeros(B, dtype=torch.bool, device=device)
        return None

    def embed_class(self, y: torch.Tensor | None, B: int, device, drop: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("class-conditional DiT needs y (int labels [B]); for text set DiTConfig.t2i=True")
        if y.shape != (B,):
            raise ValueError(f"y must have shape [{B}], got {tuple(y.shape)}")
        # (skipped on the meta device, where trainer.evaluation.efficiency counts FLOPs without values)
        if y.device.type != "meta" and ((y < 0) | (y > self.cfg.num_classes)).any():
            raise ValueError(f"labels must lie in [0, {self.cfg.num_classes}] ({self.cfg.num_classes} = null); "
                             f"got min {int(y.min())} max {int(y.max())}")
        drop = self._drop_mask(B, device, drop, self.cfg.class_dropout)
        if drop is not None:
            y = torch.where(drop, torch.full_like(y, self.cfg.num_classes), y)
        return self.y_embed(y)

    def embed_text(self, text_emb: torch.Tensor | None, text_mask: torch.Tensor | None, B: int, device,
                   drop: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if text_emb is None:
            raise ValueError("DiT-T2I needs text_emb [B, L, text_dim] (and text_mask [B, L], True = real token)")
        if text_emb.ndim != 3 or text_emb.shape[0] != B or text_emb.shape[2] != self.cfg.text_dim:
            raise ValueError(f"text_emb must be [{B}, L, {self.cfg.text_dim}] (DiTConfig.text_dim), "
                             f"got {tuple(text_emb.shape)}")
        L = text_emb.shape[1]
        if L > self.cfg.max_text_tokens:
            raise ValueError(f"text_emb has {L} tokens > DiTConfig.max_text_tokens={self.cfg.max_text_tokens}; "
                             "encode captions with the same max_tokens the DiT was configured for")
        if text_mask is None:
            text_mask = torch.ones(B, L, dtype=torch.bool, device=device)
        text_mask = text_mask.to(torch.bool)
        if text_mask.shape != (B, L):
            raise ValueError(f"text_mask must be [{B}, {L}] like text_emb, got {tuple(text_mask.shape)}")
        # shards store T5 outputs in float16; project them in the model's own precision
        text = self.text_proj(text_emb.to(self.text_proj[0].weight.dtype))  # [B, L, W]
        drop = self._drop_mask(B, device, drop, self.cfg.text_dropout)
        if drop is not None:
            null_seq = torch.zeros_like(text)
            null_seq[:, 0] = self.null_text.to(text.dtype)
            null_mask = torch.zeros_like(text_mask)
            null_mask[:, 0] = True
            text = torch.where(drop[:, None, None], null_seq, text)
            text_mask = torch.where(drop[:, None], null_mask, text_mask)
        if text_mask.device.type != "meta" and not text_mask.any(dim=1).all():
            raise ValueError("a text_mask row has no real token; an empty caption cannot condition the DiT "
                             "(drop it to the null text with drop_cond instead)")
        return text, text_mask

    # ---- forward ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                text_emb: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                drop_cond: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, d] noisy tokens, t [B] timesteps -> [B, N, 2d] (eps ; variance) or [B, N, d].

        drop_cond [B] bool forces the null condition per sample (CFG); when None, training
        mode drops with class_dropout / text_dropout and eval mode never drops.
        """
        B = x.shape[0]
        if x.shape[1:] != (self.cfg.num_tokens, self.cfg.token_dim):
            raise ValueError(f"x must be [B, {self.cfg.num_tokens}, {self.cfg.token_dim}] "
                             f"(DiTConfig.num_tokens, token_dim), got {tuple(x.shape)}")
        if t.ndim == 0:
            t = t.expand(B)
        h = self.x_embed(x) + self.pos  # [B, N, W]
        c = self.t_embed(t)  # [B, W]
        text = key_mask = None
        if self.cfg.t2i:
            text, key_mask = self.embed_text(text_emb, text_mask, B, x.device, drop_cond)  # [B, L, W], [B, L]
        else:
            c = c + self.embed_class(y, B, x.device, drop_cond)
        for block in self.blocks:
            h = block(h, c, text, key_mask)
        return self.final(h, c)  # [B, N, out_dim]

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, cfg_scale: float, y: torch.Tensor | None = None,
                         text_emb: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Classifier-free guidance in one doubled batch: eps = eps_c + (s - 1)(eps_c - eps_u).

        Guidance acts on the eps channels only; the learned-variance channels come from the
        conditional branch (DiT guides only the first channels too). Written as
        cond + (s-1)*(cond-uncond) so that s = 1 returns the conditional prediction exactly.
        """
        B = x.shape[0]
        t = t.expand(B) if t.ndim == 0 else t
        drop = torch.arange(2 * B, device=x.device) >= B  # second half: null condition
        twice = lambda a: None if a is None else torch.cat([a, a])  # noqa: E731
        out = self(twice(x), twice(t), y=twice(y), text_emb=twice(text_emb), text_mask=twice(text_mask),
                   drop_cond=drop)
        cond, uncond = out[:B], out[B:]
        d = self.cfg.token_dim
        eps = cond[..., :d] + (cfg_scale - 1.0) * (cond[..., :d] - uncond[..., :d])
        return torch.cat([eps, cond[..., d:]], dim=-1)

    def guided(self, cfg_scale: float = 1.0, **cond):
        """A `model_fn(x, t)` for trainer.models.diffusion samplers; CFG when cfg_scale != 1."""
        if cfg_scale == 1.0:
            return lambda x, t: self(x, t, drop_cond=torch.zeros(x.shape[0], dtype=torch.bool, device=x.device), **cond)
        return lambda x, t: self.forward_with_cfg(x, t, cfg_scale, **cond)

    # ---- model card (save/load/push: trainer/models/hub.py) ---------------------------------
    def card_title(self) -> str:
        c = self.cfg
        cond = f"text-to-image (D={c.text_dim})" if c.t2i else f"{c.num_classes} classes"
        return f"DiT on TexTok latents: {c.num_tokens} tokens x {c.token_dim}, {cond}, width {c.width} x {c.depth}"

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
