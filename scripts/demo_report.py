"""Helpers of `make demo` (scripts/demo.sh) that are about the demo, not the product.

    python scripts/demo_report.py captions --shards OUT/prepared/shards --n 8 --out OUT/t2i/captions.txt
    python scripts/demo_report.py t2i-grid --shards OUT/prepared/shards --captions OUT/t2i/captions.txt \
        --samples OUT/t2i/samples.npz --out OUT/t2i/t2i_vs_heldout.png
    python scripts/demo_report.py summary --out OUT --tokens "1 4 16"

`captions` takes the first --n held-out (val) images by key and writes their captions, one per
line, plus a .keys file beside it; `t2i-grid` puts each held-out image next to the images
DiT-T2I generated from its caption; `summary` gathers the measured numbers of the run into
OUT/summary.md (what the README quotes): the N / 2N table with each run's controls, and the
class-accuracy table with its controls.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pyarrow.parquet as pq


def heldout_rows(shards: str, n: int) -> list[dict]:
    """n held-out rows, taking the classes in turn (first key of each class, then the second, ...)."""
    from textok.trainer.data.loader import resolve_shards

    rows = []
    for f in resolve_shards(shards, "val"):
        rows += pq.read_table(f, columns=["key", "label", "caption"]).to_pylist()
    by_class: dict = {}
    for r in sorted(rows, key=lambda r: r["key"]):
        by_class.setdefault(r["label"], []).append(r)
    turns = [r for i in range(max(map(len, by_class.values()), default=0))
             for label in sorted(by_class, key=str) if i < len(by_class[label]) for r in [by_class[label][i]]]
    return turns[:n]


def write_captions(shards: str, n: int, out: str) -> None:
    rows = heldout_rows(shards, n)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.writelines(r["caption"].replace("\n", " ") + "\n" for r in rows)
    with open(out + ".keys", "w") as f:
        f.writelines(r["key"] + "\n" for r in rows)
    print(f"{len(rows)} held-out captions -> {out}")


def t2i_grid(shards: str, captions: str, samples: str, out: str) -> None:
    import torch

    from textok.trainer.data.loader import ShardLoader
    from textok.trainer.evaluation.grid import save_grid

    with open(captions + ".keys") as f:
        keys = [line.strip() for line in f if line.strip()]
    data = np.load(samples)
    generated = data["images"]
    per = len(generated) // len(keys)
    size = generated.shape[1]
    real = {}
    for batch in ShardLoader(shards, size, 64, split="val", train=False, num_workers=0):
        real.update({k: x for k, x in zip(batch["key"], batch["images"]) if k in keys})
    tiles = []
    for i, key in enumerate(keys):  # a row: the held-out image | what DiT-T2I drew from its caption
        tiles.append(real[key])
        tiles += [torch.from_numpy(g).permute(2, 0, 1).float() / 127.5 - 1 for g in generated[i * per:(i + 1) * per]]
    # 3x nearest-neighbour: 32 px images are too small to judge at 1:1
    save_grid(torch.nn.functional.interpolate(torch.stack(tiles), scale_factor=3, mode="nearest"), out, nrow=1 + per)
    print(f"held-out image | {per} T2I samples from its caption, {len(keys)} rows -> {out}")


def _eval(path: str) -> dict | None:
    f = os.path.join(path, "eval", "eval.json")
    return json.load(open(f)) if os.path.isfile(f) else None


def _f(v, d=2) -> str:
    return "—" if v is None else f"{v:.{d}f}"


def n_sweep_table(out: str, tokens: list[int]) -> list[str]:
    """Per N: the baseline at N, TexTok at N, their controls, and the baseline at 2N (the paper's
    second claim: TexTok at N matches the no-text baseline at 2N)."""
    lines = ["| N | baseline PSNR | rFID | rKID | TexTok PSNR | rFID | rKID | TexTok latent gain dB | "
             "baseline latent gain dB | text gain dB | baseline mean-image PSNR | baseline@2N PSNR | rFID | "
             "TexTok@N ≥ baseline@2N (PSNR / rFID) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n in tokens:
        tok, base, base2 = (_eval(os.path.join(out, name)) for name in
                            (f"tok_n{n}_both", f"tok_n{n}_none", f"tok_n{2 * n}_none"))
        if tok is None or base is None:
            continue
        kid = lambda r: "—" if r is None or r.get("rkid") is None else f"{r['rkid']:.3f} ± {r['rkid_std']:.3f}"  # noqa: E731
        if base2 is None:
            verdict = "— (no 2N run)"
        else:
            verdict = (f"{'yes' if tok['psnr'] >= base2['psnr'] else 'no'} / "
                       f"{'yes' if tok['rfid'] <= base2['rfid'] else 'no'}")
        lines.append(f"| {n} | {_f(base['psnr'])} | {_f(base['rfid'], 1)} | {kid(base)} | {_f(tok['psnr'])} | "
                     f"{_f(tok['rfid'], 1)} | {kid(tok)} | {_f(tok.get('latent_gain_db'))} | "
                     f"{_f(base.get('latent_gain_db'))} | {_f(tok.get('text_gain_db'))} | "
                     f"{_f(base.get('psnr_mean_image'))} | {_f(base2 and base2['psnr'])} | "
                     f"{_f(base2 and base2['rfid'], 1)} | {verdict} |")
    return lines


def class_accuracy_table(gen: dict, acc: dict) -> list[str]:
    """Per guidance scale: the samples' class accuracy beside the same probe on the controls
    (same pool captions), what the DiT adds over the caption alone, and gFID/KID with counts."""
    sets = sorted(gen.get("sweep", [gen]), key=lambda r: r.get("cfg_scale") or 0.0)
    by_npz = {s["npz"]: s for s in acc["samples"]}
    pct = lambda c: "—" if c is None else f"{100 * c['accuracy']:.1f} ± {100 * c['se']:.1f}"  # noqa: E731
    gain = lambda g: "—" if g is None else f"{100 * g['value']:+.1f} ± {100 * g['se']:.1f}"  # noqa: E731
    lines = [f"Probe (small CNN trained on the {acc['train_images']} real training images): "
             f"{100 * acc['real_val_accuracy']:.1f} % on the {acc['val_images']} held-out real images; "
             f"chance {100 * acc['chance']:.1f} %. Class accuracy in % ± its standard error; every column decodes "
             f"with the same pool captions (which name the class), so the gains, not the DiT column, say what "
             f"the generator adds.", "",
             "| guidance | samples | DiT | same-class real | other-class real | Gaussian | mean latent | "
             "DiT − other-class | DiT − Gaussian | gFID | KID | reference images |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in sets:
        a = by_npz.get(s["samples"], {})
        c = a.get("controls") or {}
        kid = "—" if s.get("kid") is None else f"{s['kid']:.3f} ± {s['kid_std']:.3f}"
        lines.append(f"| {s.get('cfg_scale')} | {s['num_samples']} | {pct(c.get('dit') or a)} | "
                     f"{pct(c.get('same_class_real'))} | {pct(c.get('other_class_real'))} | {pct(c.get('gaussian'))} | "
                     f"{pct(c.get('mean_latent'))} | {gain(a.get('dit_minus_other_class'))} | "
                     f"{gain(a.get('dit_minus_gaussian'))} | {_f(s['gfid'], 1)} | {kid} | {s['num_reference']} |")
    chosen = gen.get("chosen")
    if chosen:
        lines += ["", f"Guidance chosen on {gen['num_tuning_reference']} training images (lowest gFID there): "
                      f"{chosen['cfg_scale']}; its gFID against the {chosen['num_reference']} held-out images: "
                      f"{chosen['gfid']:.1f}. FID at a few hundred images is dominated by its bias: compare it only "
                      f"within this table (equal counts)."]
    elif "sweep" in gen:
        lines += ["", f"No scale is called best: {gen.get('chosen_note', '')}"]
    return lines


def summary(out: str, tokens: list[int]) -> None:
    lines = ["# make demo: measured numbers of this run", ""]
    lines += ["## TexTok at N vs the no-text baseline at N and 2N (held-out images)", "",
              *n_sweep_table(out, tokens), "",
              "latent gain = PSNR with the image's own Z minus PSNR with another image's Z (same caption); text "
              "gain = PSNR with the image's own caption minus with another image's (same Z). A latent gain near 0 "
              "means the tokens carry nothing and the PSNR comes from the caption alone.", ""]
    compare = os.path.join(out, "compare.md")
    if os.path.isfile(compare):
        lines += ["## Every run with its controls", "", open(compare).read().strip(), "",
                  "(plot: rfid_vs_tokens.png)", ""]
    gen = os.path.join(out, "samples", "eval_gen.json")
    acc = os.path.join(out, "samples", "class_accuracy.json")
    if os.path.isfile(gen) and os.path.isfile(acc):
        lines += ["## Class-conditional generation (DiT on TexTok latents, captions from each class's pool)", "",
                  *class_accuracy_table(json.load(open(gen)), json.load(open(acc))), ""]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("captions")
    c.add_argument("--shards", required=True)
    c.add_argument("--n", type=int, default=8)
    c.add_argument("--out", required=True)
    t = sub.add_parser("t2i-grid")
    for name in ("--shards", "--captions", "--samples", "--out"):
        t.add_argument(name, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--out", required=True)
    s.add_argument("--tokens", default="1 4 16", help="The N values of the sweep (TOKENS_LIST), space-separated.")
    args = ap.parse_args()
    if args.cmd == "captions":
        write_captions(args.shards, args.n, args.out)
    elif args.cmd == "t2i-grid":
        t2i_grid(args.shards, args.captions, args.samples, args.out)
    else:
        summary(args.out, [int(t) for t in args.tokens.split()])


if __name__ == "__main__":
    main()
