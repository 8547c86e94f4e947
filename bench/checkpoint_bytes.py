"""What a train-tokenizer checkpoint costs, before and after the discriminator starts -> JSON.

    python bench/checkpoint_bytes.py                  # tiny (written to disk) + B (counted): ~30 s
    python bench/checkpoint_bytes.py --presets tiny   # the test's run

Per preset (the trainer's own `build_model`, T5-XL text width 2048 for B, the preset's image size):
bytes of each part of a checkpoint, counted from the real state dicts -- model, EMA, AdamW state
of the tokenizer (2 fp32 moments per parameter), discriminator and its AdamW state -- then

- `checkpoint_before_disc_start`: what is saved before `disc_start` (no discriminator, no opt_d);
- `checkpoint_after_disc_start`: with them (what every checkpoint held before issue 20);
- `export_tokenizer`: the weights-only `tokenizer/` (EMA weights, no optimizer, no loss state).

For tiny (small enough) the checkpoints are also written with the trainer's `Checkpointer` after one
real AdamW step, and `on_disk_*` gives their measured size.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import emit  # noqa: E402

PRESETS = {"tiny": dict(text_dim=64, max_tokens=32), "B": dict(text_dim=2048, max_tokens=128)}


def nbytes(sd: dict) -> int:
    return sum(v.numel() * v.element_size() for v in sd.values() if isinstance(v, torch.Tensor))


def adam_bytes(module: torch.nn.Module) -> int:
    return 2 * sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def measure(preset: str, write: bool) -> dict:
    from textok.trainer.training.checkpoint import Checkpointer
    from textok.trainer.training.optim import EMA, build_optimizer
    from textok.trainer.training.train_tokenizer import build_model, load_config

    cfg = load_config(None, shards="-", output="-", preset=preset, perceptual="none", steps=1)
    model, loss_fn = build_model(cfg, PRESETS[preset]["text_dim"], PRESETS[preset]["max_tokens"])
    ema = EMA(model, cfg.ema)
    loss_before = nbytes(loss_fn.state_dict())
    disc = loss_fn.start_discriminator(0)
    parts = {"model": nbytes(model.state_dict()), "ema": nbytes(ema.state_dict()), "opt_g": adam_bytes(model),
             "loss_state_without_D": loss_before, "discriminator": nbytes(disc.state_dict()), "opt_d": adam_bytes(disc)}
    before = parts["model"] + parts["ema"] + parts["opt_g"] + loss_before
    out = {"params_tokenizer": sum(p.numel() for p in model.parameters()),
           "params_discriminator": sum(p.numel() for p in disc.parameters()), "parts_bytes": parts,
           "checkpoint_before_disc_start": before,
           "checkpoint_after_disc_start": before + parts["discriminator"] + parts["opt_d"],
           "export_tokenizer": parts["model"], "disc_start": cfg.disc_start}
    if write:
        opt_g, opt_d = build_optimizer(model, cfg.lr), build_optimizer(disc, cfg.lr)
        for m, opt in ((model, opt_g), (disc, opt_d)):  # one real step, so AdamW holds its moments
            for p in m.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
        with tempfile.TemporaryDirectory() as tmp:
            ck = Checkpointer(tmp, keep_last=10)
            pre = ck.save(1, {"model": model.state_dict(), "ema": ema.state_dict(),
                              "discriminator": {k: v for k, v in loss_fn.state_dict().items()
                                                if not k.startswith("discriminator.")}},
                          {"opt_g": opt_g.state_dict()})
            post = ck.save(2, {"model": model.state_dict(), "ema": ema.state_dict(),
                               "discriminator": loss_fn.state_dict()},
                           {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()})
            model.save_pretrained(os.path.join(tmp, "tokenizer"))
            out.update(on_disk_before_disc_start=dir_bytes(pre), on_disk_after_disc_start=dir_bytes(post),
                       on_disk_export_tokenizer=dir_bytes(os.path.join(tmp, "tokenizer")))
    out["MB"] = {k: round(v / 1e6, 2) for k, v in out.items() if k.startswith(("checkpoint", "export", "on_disk"))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,B")
    p.add_argument("--write-presets", default="tiny", help="presets also written to disk (real sizes)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    writes = set(args.write_presets.split(","))
    emit({"bench": "checkpoint_bytes",
          "presets": {n: measure(n, n in writes) for n in args.presets.split(",")}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
