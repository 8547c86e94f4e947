"""Benchmark of the pipeline on Dask (not a test): throughput on 1 vs 2 Dask workers, and in-process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dask_scaling.py [--captions 96] [--images 48] [--latency 0.2]

Two stages over the same data on three engines: Beam's in-process FnApiRunner, a local Dask
cluster of 1 worker process, and one of 2 worker processes (clusters started before the clock,
as a standing cluster would be):

- encode: `run_encode` with a small random T5 (d_model 256, 4 layers), one shard per 8 captions;
- caption: `run_caption` with the gemini backend against the fake server at a fixed latency,
  one request in flight per worker (`--max-in-flight 1`, so a worker is latency-bound and a
  second worker can double the rate, as more workers against a rate-limited API would).

Prints items/s per engine and `dask_2_over_1`, the scaling ratio (2.0 is perfect). On a
2-core machine shared with other work the encode ratio is capped by the cores, not by Dask.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FAKE_KEY = "fake-key-for-the-local-server"


def make_images(root: str, n: int) -> str:
    from PIL import Image

    colours = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}
    for i in range(n):
        name = list(colours)[i % 3]
        os.makedirs(os.path.join(root, "train", name), exist_ok=True)
        Image.new("RGB", (16 + i % 7, 16), colours[name]).save(os.path.join(root, "train", name, f"{i}.png"))
    return root


def engines(addresses: dict[str, str]) -> dict[str, list[str]]:
    return {"in_process": [], **{k: ["--runner", "dask", "--dask_client_address", a] for k, a in addresses.items()}}


def bench_encode(tmp: str, n: int, addresses: dict[str, str]) -> dict:
    from encode_throughput import make_captions
    from test_encode import make_captions_dir
    from test_text_encoder import make_random_t5

    from textok.pipeline.encode.pipeline import run_encode

    caps = make_captions_dir(os.path.join(tmp, "cap"), n_train=n, n_val=0)
    t5 = make_random_t5(os.path.join(tmp, "t5"), make_captions(200), d_model=256, num_layers=4, vocab_size=400)
    out = {}
    for name, args in engines(addresses).items():
        kw = dict(encoder=t5, rows_per_shard=8, max_tokens=64, batch_size=8, device="cpu", beam_args=args)
        run_encode(caps, os.path.join(tmp, f"warm-{name}"), **kw)  # workers import torch and load T5 once
        t0 = time.monotonic()
        s = run_encode(caps, os.path.join(tmp, f"enc-{name}"), **kw)
        out[name] = round(s["rows"] / (time.monotonic() - t0), 2)
    return {"unit": "captions/s", "captions": n, **out, "dask_2_over_1": round(out["dask_2"] / out["dask_1"], 2)}


def bench_caption(tmp: str, n: int, latency: float, addresses: dict[str, str]) -> dict:
    from fake_gemini import FakeGemini, ok

    from textok.pipeline.captioning.pipeline import run_caption

    data = make_images(os.path.join(tmp, "images"), n)
    out = {}
    with FakeGemini(default=ok(latency_s=latency)) as fake:
        opts = {"model_id": "gemini-2.5-flash-lite", "base_url": fake.url, "max_in_flight": 1}
        for name, args in engines(addresses).items():
            run_caption(data, os.path.join(tmp, f"warm-cap-{name}"), captioner="gemini", captioner_options=opts,
                        batch_size=2, beam_args=args)
            t0 = time.monotonic()
            s = run_caption(data, os.path.join(tmp, f"cap-{name}"), captioner="gemini", captioner_options=opts,
                            batch_size=2, beam_args=args)
            out[name] = round(s["captioned"] / (time.monotonic() - t0), 2)
    return {"unit": "images/s", "images": n, "latency_s": latency, **out,
            "dask_2_over_1": round(out["dask_2"] / out["dask_1"], 2)}


def main() -> None:
    from _report import emit

    from textok.pipeline.runners import local_cluster

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=96)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["GEMINI_API_KEY"] = FAKE_KEY  # before the clusters start: workers inherit the environment
    with tempfile.TemporaryDirectory() as tmp, local_cluster(1) as one, local_cluster(2) as two:
        addresses = {"dask_1": one, "dask_2": two}
        result = {"bench": "dask_scaling", "encode": bench_encode(tmp, a.captions, addresses),
                  "caption": bench_caption(tmp, a.images, a.latency, addresses)}
    emit(result, a.out)


if __name__ == "__main__":
    main()
