"""TexTok: a text-conditioned ViT image tokenizer and detokenizer (Zha et al., CVPR 2025).

    from textok.trainer.models.textok import TexTok, textok_config
    model = TexTok(textok_config("tiny", text_dim=32))          # 32 px, patch 4, N = 16
    z = model.encode(images, text_emb, text_mask)                # [B,3,H,W] -> [B,N,8]
    recon = model.decode(z, text_emb, text_mask)                 # [B,N,8] -> [B,3,H,W]
    model.save_pretrained("runs/tok/final"); TexTok.from_pretrained("runs/tok/final")   # or a hub id

Tokenizer:   [patch tokens ; N learnable image tokens ; text tokens] -> ViT -> keep the N
             image tokens -> LayerNorm -> Linear(width -> d)                   = Z [B,N,d]
Detokenizer: [one shared learnable patch token per output patch ; Linear(d -> width)(Z) ;
             text tokens] -> ViT -> keep the patch tokens -> LayerNorm -> Linear -> pixels.
Text enters "in context" by concatenation, which the paper (Table 6) found better than
cross-attention. The detokenizer never sees the image except through Z: there is no path
from `images` to `decode`, and tests/test_textok_model.py proves it with gradients.

Positions: image patches use fixed 2-D sin-cos embeddings (MAE / DiT) -- parameter-free and
the same at every width, so the encoder's and the decoder's patch grids agree by
construction. Text tokens and Z tokens get learned position embeddings: T5 outputs carry
no absolute position and Z tokens are otherwise indistinguishable to a permutation-
equivariant decoder (TiTok does the same for its latent tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from textok.trainer.models.hub import TEXT_ENCODER_FILE, TRAINING_FILE, HubModel

TEXT_MODES = ("both", "enc", "dec", "none")


@dataclass
class TexTokConfig:
    image_size: int = 256
    patch_size: int = 8
    num_tokens: int = 128  # N, the number of latent image tokens
    token_dim: int = 8  # d, the width of each latent token
    # per side: the tokenizer and the detokenizer are each a ViT of this size
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    text_dim: int = 2048  # T5-XL d_model at 256 px; T5-XXL (4096) at 512 px
    max_text_tokens: int = 128
    text_mode: str = "both"  # both | enc | dec | none (the paper's no-text baseline)
    dropout: float = 0.0

    def __post_init__(self):
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"TexTokConfig.text_mode={self.text_mode!r}: expected one of {TEXT_MODES}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"TexTokConfig: image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"TexTokConfig: width={self.width} must split into heads={self.heads} of even size")
        if self.width % 4:
            raise ValueError(f"TexTokConfig: width={self.width} must be a multiple of 4 (2-D sin-cos positions)")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def text_in_encoder(self) -> bool:
        return self.text_mode in ("both", "enc")

    @property
    def text_in_decoder(self) -> bool:
        return self.text_mode in ("both", "dec")


# Sizes are per side. "B" is the paper's setting (ViT-B encoder + ViT-B decoder, ~176M).
# "tiny" also shrinks the image so CPU tests and the offline demo run in seconds; every
# preset value can be overridden (textok_config("B", image_size=512, patch_size=16)).
TEXTOK_PRESETS: dict[str, dict] = {
    "tiny": dict(width=64, depth=2, heads=4, image_size=32, patch_size=4, num_tokens=16),
    "S": dict(width=512, depth=8, heads=8),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
}


def textok_config(preset: str, **overrides) -> TexTokConfig:
    if preset not in TEXTOK_PRESETS:
        raise ValueError(f"unknown TexTok preset {preset!r}: choose one of {sorted(TEXTOK_PRESETS)}")
    known = {f.name for f in fields(TexTokConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown TexTokConfig field(s) {unknown}: known fields are {sorted(known)}")
    return TexTokConfig(**{**TEXTOK_PRESETS[preset], **overrides})


# ----------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B,h,L,c]
        # attn_mask [B,1,1,L] bool, True = this key takes part (padding text tokens are False)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(B, L, C))


class Block(nn.Module):
    """Pre-norm transformer block (ViT)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), attn_mask))
        return x + self.drop(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    def __init__(self, cfg: TexTokConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask)
        return x


class TextProjection(nn.Module):
    """Linear(text_dim -> width) + learned positions. One per side: the paper's encoder and
    decoder each project the same T5 tokens with their own weights."""

    def __init__(self, cfg: TexTokConfig):
        super().__init__()
        self.max_tokens = cfg.max_text_tokens
        self.proj = nn.Linear(cfg.text_dim, cfg.width)
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_text_tokens, cfg.width))

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        T = text_emb.shape[1]
        return self.proj(text_emb) + self.pos[:, :T]  # [B,T,width]


def sincos_2d(width: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding [grid*grid, width] (MAE, DiT): half the channels
    encode the row, half the column, each as sin/cos at geometric frequencies."""
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angles = coord[:, None] * omega[None]  # [grid*grid, width/4]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


# ----------------------------------------------------------------------------- model


class TexTok(nn.Module, HubModel):
    """save_pretrained / from_pretrained(path or hub id, revision=) / push_to_hub: trainer/models/hub.py."""

    config_class, model_type = TexTokConfig, "textok"
    SIDE_FILES = (TEXT_ENCODER_FILE, TRAINING_FILE)

    def __init__(self, cfg: TexTokConfig):
        super().__init__()
        self.cfg = cfg
        W, N, P = cfg.width, cfg.num_tokens, cfg.num_patches
        patch_dim = 3 * cfg.patch_size ** 2
        self.register_buffer("patch_pos", sincos_2d(W, cfg.grid_size)[None], persistent=False)  # [1,P,W]

        # tokenizer
        self.enc_patch_embed = nn.Linear(patch_dim, W)
        self.enc_image_tokens = nn.Parameter(torch.zeros(1, N, W))  # learnable, so they need no positions
        self.enc_text = TextProjection(cfg) if cfg.text_in_encoder else None
        self.encoder = ViT(cfg)
        self.enc_norm = nn.LayerNorm(W)
        self.to_latent = nn.Linear(W, cfg.token_dim)  # plain linear bottleneck to d = 8, as in the paper

        # detokenizer
        self.dec_patch_token = nn.Parameter(torch.zeros(1, 1, W))  # one vector shared by all P patch slots
        self.from_latent = nn.Linear(cfg.token_dim, W)
        self.dec_latent_pos = nn.Parameter(torch.zeros(1, N, W))
        self.dec_text = TextProjection(cfg) if cfg.text_in_decoder else None
        self.decoder = ViT(cfg)
        self.dec_norm = nn.LayerNorm(W)
        self.to_pixels = nn.Linear(W, patch_dim)
        self._P = P
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ViT / DiT init: trunc-normal(0.02) for linear weights and learned embeddings, zero biases
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith(("image_tokens", "patch_token", "latent_pos", ".pos")):
                nn.init.trunc_normal_(p, std=0.02)

    # -- helpers

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        B, C, H, W = images.shape
        s, p = self.cfg.image_size, self.cfg.patch_size
        if C != 3 or H != s or W != s:
            raise ValueError(f"TexTok expects images [B,3,{s},{s}] (TexTokConfig.image_size={s}), "
                             f"got {tuple(images.shape)}")
        g = s // p
        x = images.reshape(B, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1)  # [B,gh,gw,p,p,3]
        return x.reshape(B, g * g, p * p * 3)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        g, p = self.cfg.grid_size, self.cfg.patch_size
        x = x.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4)  # [B,3,gh,p,gw,p]
        return x.reshape(B, 3, g * p, g * p)

    def _text(self, proj: TextProjection, text_emb, text_mask, B: int, side: str):
        """Project text for one side -> (tokens [B,T,W], key mask [B,T] bool)."""
        if text_emb is None:
            raise ValueError(f"TexTok(text_mode={self.cfg.text_mode!r}) needs text_emb in {side}; "
                             "pass the T5 embeddings or build the model with text_mode='none'")
        if text_emb.ndim != 3 or text_emb.shape[0] != B or text_emb.shape[2] != self.cfg.text_dim:
            raise ValueError(f"text_emb must be [B={B}, T, text_dim={self.cfg.text_dim}], got {tuple(text_emb.shape)}")
        T = text_emb.shape[1]
        if T > self.cfg.max_text_tokens:
            raise ValueError(f"text_emb has {T} tokens > TexTokConfig.max_text_tokens={self.cfg.max_text_tokens}")
        if text_mask is None:
            text_mask = torch.ones(B, T, dtype=torch.bool, device=text_emb.device)
        elif text_mask.shape != (B, T):
            raise ValueError(f"text_mask must be [B={B}, T={T}], got {tuple(text_mask.shape)}")
        return proj(text_emb.to(proj.proj.weight.dtype)), text_mask.bool()

    @staticmethod
    def _attn_mask(x: torch.Tensor, n_always: int, text_mask: torch.Tensor | None):
        """Key-padding mask [B,1,1,L] for SDPA; None when nothing is padded (fast path)."""
        if text_mask is None or bool(text_mask.all()):
            return None
        keep = torch.ones(x.shape[0], n_always, dtype=torch.bool, device=x.device)
        return torch.cat([keep, text_mask], dim=1)[:, None, None, :]

    # -- public API

    def encode(self, images, text_emb=None, text_mask=None) -> torch.Tensor:
        """images [B,3,H,W] in [-1,1]; text_emb [B,T,text_dim]; text_mask [B,T] True = real -> Z [B,N,d]."""
        B, N, P = images.shape[0], self.cfg.num_tokens, self._P
        x = self.enc_patch_embed(self.patchify(images)) + self.patch_pos  # [B,P,W]
        parts, mask = [x, self.enc_image_tokens.expand(B, -1, -1)], None  # + [B,N,W]
        if self.enc_text is not None:
            t, mask = self._text(self.enc_text, text_emb, text_mask, B, "encode")
            parts.append(t)  # + [B,T,W]
        x = torch.cat(parts, dim=1)
        x = self.encoder(x, self._attn_mask(x, P + N, mask))
        return self.to_latent(self.enc_norm(x[:, P:P + N]))  # [B,N,d]

    def decode(self, z, text_emb=None, text_mask=None) -> torch.Tensor:
        """Z [B,N,d] (+ text) -> images [B,3,H,W], unbounded (trained towards [-1,1])."""
        B, N, P = z.shape[0], self.cfg.num_tokens, self._P
        if z.shape[1:] != (N, self.cfg.token_dim):
            raise ValueError(f"z must be [B, num_tokens={N}, token_dim={self.cfg.token_dim}], got {tuple(z.shape)}")
        patches = self.dec_patch_token.expand(B, P, -1) + self.patch_pos  # [B,P,W]
        latents = self.from_latent(z.to(self.from_latent.weight.dtype)) + self.dec_latent_pos  # [B,N,W]
        parts, mask = [patches, latents], None
        if self.dec_text is not None:
            t, mask = self._text(self.dec_text, text_emb, text_mask, B, "decode")
            parts.append(t)
        x = torch.cat(parts, dim=1)
        x = self.decoder(x, self._attn_mask(x, P + N, mask))
        return self.unpatchify(self.to_pixels(self.dec_norm(x[:, :P])))  # [B,3,H,W]

    def forward(self, images, text_emb=None, text_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(images, text_emb, text_mask)
        return self.decode(z, text_emb, text_mask), z

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def card_title(self) -> str:
        c = self.cfg
        return (f"TexTok tokenizer: {c.image_size} px, {c.num_tokens} tokens x {c.token_dim}, "
                f"text {c.text_mode} (D={c.text_dim})")
