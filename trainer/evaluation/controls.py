"""Where a reconstruction comes from: the latent, the caption, or neither (issue 18).

    from textok.trainer.evaluation.controls import ControlSums, reconstruction_controls
    per, recon = reconstruction_controls(model, images, text_emb, text_mask, mean_z, mean_image)  # {name: PSNR [B]}
    sums = ControlSums(); sums.add(per); sums.result()   # {"psnr": ..., "latent_gain_db": ..., ...}

A PSNR alone cannot tell a tokenizer whose latent carries the image from one that decodes from
the caption alone (the trunc-normal(0.02) init trained into exactly that: own Z, another image's
Z and the mean Z all decoded to 19.06 dB). So every reconstruction number is computed beside its
controls, on the same images:

  psnr                 own Z, own caption (what the tokenizer does)
  psnr_swapped_latent  another image's Z (the next one in the batch), own caption
  psnr_mean_latent     the mean Z of the evaluation set, own caption
  psnr_swapped_text    another image's caption (text modes only): the decoder reads it beside the
                       own Z (both, dec); in `enc` mode, where only the encoder reads text, the
                       image is encoded with it
  psnr_mean_image      the evaluation set's mean image, for every image (no latent, no text)
  latent_gain_db       psnr - psnr_swapped_latent: what the image's own latent adds
  text_gain_db         psnr - psnr_swapped_text: what the image's own caption adds

A tokenizer that ignores Z has latent_gain_db ~ 0; one that ignores the caption has
text_gain_db ~ 0; one that has learned nothing is near psnr_mean_image.
"""
from __future__ import annotations

import torch

from textok.trainer.evaluation.metrics import psnr

CONTROL_KEYS = ("psnr", "psnr_swapped_latent", "psnr_mean_latent", "psnr_swapped_text", "psnr_mean_image")
GAIN_KEYS = ("latent_gain_db", "text_gain_db")
# below this, the latent is "carrying almost nothing": train-tokenizer warns (a working tiny
# tokenizer measured 3-10 dB on the demo data; the degenerate one 0.0)
DEGENERATE_LATENT_GAIN_DB = 0.5


def _psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return psnr(recon.float().clamp(-1, 1), images.float()).clamp(max=100).cpu()


@torch.no_grad()
def reconstruction_controls(model, images: torch.Tensor, text_emb: torch.Tensor | None,
                            text_mask: torch.Tensor | None, mean_z: torch.Tensor | None = None,
                            mean_image: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """-> ({name: per-image PSNR [B]} for CONTROL_KEYS (psnr_swapped_text only for text modes),
    the own reconstruction [B,3,H,W] float in [-1,1]).

    The partner of image i is image i+1 of the batch (B >= 2). mean_z [N,d] and mean_image [3,H,W]
    default to this batch's means (what train-tokenizer's one-batch watch uses).
    """
    B = images.shape[0]
    if B < 2:
        raise ValueError(f"the controls swap latents and captions within a batch: need >= 2 images, got {B}")
    cfg = model.cfg
    if not cfg.text_in_encoder and not cfg.text_in_decoder:
        text_emb = text_mask = None
    partner = torch.roll(torch.arange(B, device=images.device), -1)
    z = model.encode(images, text_emb, text_mask)
    mean_z = z.float().mean(0) if mean_z is None else mean_z.to(z.device)
    mean_image = images.float().mean(0) if mean_image is None else mean_image.to(images.device)
    recon = model.decode(z, text_emb, text_mask).float().clamp(-1, 1)
    out = {
        "psnr": _psnr(recon, images),
        "psnr_swapped_latent": _psnr(model.decode(z[partner], text_emb, text_mask), images),
        "psnr_mean_latent": _psnr(model.decode(mean_z.to(z.dtype).expand_as(z), text_emb, text_mask), images),
        "psnr_mean_image": _psnr(mean_image.expand_as(images), images),
    }
    if text_emb is not None:
        t, m = text_emb[partner], None if text_mask is None else text_mask[partner]
        if cfg.text_in_decoder:
            out["psnr_swapped_text"] = _psnr(model.decode(z, t, m), images)
        else:  # enc: the decoder never reads text, so the other caption goes where it is read
            out["psnr_swapped_text"] = _psnr(model.decode(model.encode(images, t, m)), images)
    return out, recon


class ControlSums:
    """Per-image control PSNRs accumulated over batches -> means and gains (dB)."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = {}

    def add(self, per_image: dict[str, torch.Tensor], take: slice | None = None) -> None:
        for k, v in per_image.items():
            self.values.setdefault(k, []).append(v if take is None else v[take])

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {k: (float(torch.cat(self.values[k]).mean()) if k in self.values else None)
                                        for k in CONTROL_KEYS}
        out["latent_gain_db"] = out["psnr"] - out["psnr_swapped_latent"]
        out["text_gain_db"] = None if out["psnr_swapped_text"] is None else out["psnr"] - out["psnr_swapped_text"]
        return out


def latent_gain_db(model, images, text_emb, text_mask) -> float:
    """One batch's latent_gain_db (train-tokenizer's watch for the degenerate optimum)."""
    sums = ControlSums()
    sums.add(reconstruction_controls(model, images, text_emb, text_mask)[0])
    return sums.result()["latent_gain_db"]
