"""Helpers of `make demo` (scripts/demo.sh) that are about the demo, not the product.

    python scripts/demo_report.py captions --shards OUT/prepared/shards --n 8 --out OUT/t2i/captions.txt
    python scripts/demo_report.py t2i-grid --shards OUT/prepared/shards --captions OUT/t2i/captions.txt \
        --samples OUT/t2i/samples.npz --out OUT/t2i/t2i_vs_heldout.png
    python scripts/demo_report.py summary --out OUT

`captions` takes the first --n held-out (val) images by key and writes their captions, one per
line, plus a .keys file beside it; `t2i-grid` puts each held-out image next to the images
DiT-T2I generated from its caption; `summary` gathers the measured numbers of the run into
OUT/summary.md (what the README quotes).
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


def summary(out: str) -> None:
    lines = ["# make demo: measured numbers of this run", ""]
    compare = os.path.join(out, "compare.md")
    if os.path.isfile(compare):
        lines += ["## Reconstruction on held-out images: TexTok vs the no-text baseline, per N", "",
                  open(compare).read().strip(), "", "(plot: rfid_vs_tokens.png)", ""]
    gen = os.path.join(out, "samples", "eval_gen.json")
    acc = os.path.join(out, "samples", "class_accuracy.json")
    if os.path.isfile(gen) and os.path.isfile(acc):
        g, a = json.load(open(gen)), json.load(open(acc))
        sets = sorted(g.get("sweep", [g]), key=lambda r: r.get("cfg_scale") or 0.0)
        by_npz = {s["npz"]: s for s in a["samples"]}
        lines += ["## Class-conditional generation (DiT on TexTok latents, captions from each class's pool)", "",
                  f"Probe (small CNN trained on the {a['train_images']} real training images): "
                  f"{100 * a['real_val_accuracy']:.1f} % on the {a['val_images']} held-out real images; "
                  f"chance {100 * a['chance']:.1f} %.", "",
                  "| guidance | samples | class accuracy | × chance | gFID | precision | recall |",
                  "|---|---|---|---|---|---|---|"]
        for s in sets:
            c = by_npz.get(s["samples"], {})
            fmt = lambda v, d=3: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
            lines.append(f"| {s.get('cfg_scale')} | {s['num_samples']} | "
                         f"{100 * c.get('accuracy', float('nan')):.1f} % | {c.get('times_chance', float('nan')):.2f} | "
                         f"{fmt(s['gfid'], 1)} | {fmt(s.get('precision'), 2)} | {fmt(s.get('recall'), 2)} |")
        if "best" in g:
            lines += ["", f"Best gFID at guidance {g['best']['cfg_scale']} (against {sets[0]['num_reference']} "
                          f"held-out images; tiny sets, so gFID is only comparable within this table)."]
        lines.append("")
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
    args = ap.parse_args()
    if args.cmd == "captions":
        write_captions(args.shards, args.n, args.out)
    elif args.cmd == "t2i-grid":
        t2i_grid(args.shards, args.captions, args.samples, args.out)
    else:
        summary(args.out)


if __name__ == "__main__":
    main()
