"""A Gemini Batch Mode run on N tiny images against the fake batch server (not a test): prints JSON.

    .venv/bin/python bench/batch_caption_fake.py [--n 10000] [--per-job 2000] [--model gemini-2.5-flash-lite]

What a user sees over a day of Batch Mode, compressed to seconds: run 1 submits and exits
(jobs pending); run 2, while they run, polls and submits nothing; run 3, after they end,
collects every result; run 4 finds nothing to do. 1 % of lines fail retryably (HTTP 503)
the first time and are resubmitted by the run that collects them (--wait); 0.5 % are
blocked (SAFETY) and dead-lettered. Reported: requests submitted, jobs, the runs that
submitted nothing, and the summary's sync-vs-batch cost projection for ImageNet-1k.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--per-job", type=int, default=2_000)
    p.add_argument("--model", default="gemini-2.5-flash-lite")
    p.add_argument("--job-s", type=float, default=20.0, help="seconds a fake job takes (pending + running)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from PIL import Image

    from fake_gemini import error, ok, safety
    from fake_gemini_batch import FakeGeminiBatch, JobPlan
    from textok.pipeline.captioning.batch import BatchOptions, run_batch_caption

    key = "bench-key-not-a-secret"
    os.environ["GEMINI_API_KEY"] = key
    seen: set = set()

    def lines(k: str):
        i = int(k.rsplit("/", 1)[1].split(".")[0])
        if i % 200 == 7:
            return safety()
        if i % 100 == 3 and k not in seen:
            seen.add(k)
            return error(503)
        return ok()

    with tempfile.TemporaryDirectory() as tmp, \
            FakeGeminiBatch(api_key=key, line_script=lines,
                            job_script=lambda i, name: JobPlan(pending_s=a.job_s / 2, running_s=a.job_s / 2)) as fake:
        data = os.path.join(tmp, "data", "train")
        for i in range(a.n):
            d = os.path.join(data, f"c{i % 10}")
            os.makedirs(d, exist_ok=True)
            Image.new("RGB", (8, 8), (i % 256, i // 256 % 256, 128)).save(os.path.join(d, f"{i}.png"))
        out = os.path.join(tmp, "out")
        opts = {"model_id": a.model, "base_url": fake.url}
        runs = []
        for wait in (False, False, None, True, True):
            if wait is None:  # let the fake jobs finish, as a day would
                time.sleep(a.job_s)
                continue
            t0 = time.monotonic()
            s = run_batch_caption(os.path.join(tmp, "data"), out, captioner_options=opts,
                                  batch=BatchOptions(wait=wait, max_requests_per_job=a.per_job, poll_s=0.5,
                                                     poll_max_s=1.0), commit_every=2048)
            b = s["batch"]
            runs.append({"wait": wait, "s": round(time.monotonic() - t0, 1),
                         "requests_submitted": b["requests_submitted_this_run"],
                         "jobs_created": b["jobs_created_this_run"], "jobs_collected": b["jobs_collected_this_run"],
                         "captioned": s["captioned"], "dead_letter": s["dead_letter"],
                         "in_flight": b["requests_in_flight"]})
        print(json.dumps({
            "images": a.n, "runs": runs,
            "requests_submitted_total": len(fake.submitted_keys()), "jobs_total": len(fake.created_jobs()),
            "reruns_that_submitted_nothing": sum(r["requests_submitted"] == 0 for r in runs[1:]),
            "on_disk": s["on_disk"], "dead_letter_by_reason": s["dead_letter_by_reason"],
            "projection": s["batch"]["projection"],
        }, indent=2))


if __name__ == "__main__":
    main()
