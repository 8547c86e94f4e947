"""Benchmark of `textok caption --captioner openai` on a fleet with a dead server (not a test): prints JSON.

    .venv/bin/python bench/fleet_faults.py [--n 400] [--latency 0.05] [--max-in-flight 32]

The issue-19 reproduction: a fleet of two `--openai-base-url` servers (tests/fake_openai.py),
one of them dead (connection refused). Before the fleet's circuit breakers, least-in-flight
routing kept choosing the dead server (it never has anything in flight): 45 of 400 captioned,
exit 0, and a warning blaming the budget. Reported: exit status, captioned / dead-lettered /
deferred, requests the live server answered (= images: none paid twice), wall time, and the
same run against the live server alone for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def caption(images: str, out: str, urls: list[str], max_in_flight: int) -> tuple[int, dict, float]:
    argv = [sys.executable, "-m", "textok", "caption", "--input", images, "--output", out, "--captioner", "openai",
            "--model", "m", "--max-in-flight", str(max_in_flight)]
    for u in urls:
        argv += ["--openai-base-url", u]
    t = time.monotonic()
    r = subprocess.run(argv, env=dict(os.environ, OPENAI_API_KEY="bench"), capture_output=True, text=True)
    return r.returncode, json.loads(r.stdout) if r.returncode == 0 else {"stderr": r.stderr[-500:]}, \
        time.monotonic() - t


def main() -> None:
    from fake_gemini import ok
    from fake_openai import FakeOpenAI
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--max-in-flight", type=int, default=32)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = os.path.join(tmp, "images")
        for i in range(a.n):
            d = os.path.join(images, "train", f"c{i % 4}")
            os.makedirs(d, exist_ok=True)
            Image.new("RGB", (32, 24), (i % 256, i * 7 % 256, i * 13 % 256)).save(os.path.join(d, f"{i}.png"))
        gone = FakeOpenAI().start()
        dead = gone.base_url
        gone.stop()
        report = {}
        for name, with_dead in (("fleet_one_dead", True), ("live_server_alone", False)):
            with FakeOpenAI(default=ok(latency_s=a.latency)) as live:
                urls = [dead, live.base_url] if with_dead else [live.base_url]
                rc, s, wall = caption(images, os.path.join(tmp, name), urls, a.max_in_flight)
                report[name] = {"exit": rc, "wall_s": round(wall, 2), "live_server_requests": len(live.requests),
                                **{k: s.get(k) for k in ("captioned", "dead_letter", "deferred", "pipeline_s")}}
    print(json.dumps({"n": a.n, "latency_s": a.latency, "max_in_flight": a.max_in_flight, **report}, indent=2))


if __name__ == "__main__":
    main()
