"""Issue 19 item 16a: a batch job that ended badly says what happens to its keys (resubmitted, or
dead-lettered after --batch-max-attempts), never "resubmitted" for keys that were dead-lettered.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_batch_messages.py
"""
from __future__ import annotations

import logging

from fake_gemini_batch import JobPlan
from test_caption_pipeline import assert_each_key_once, read_table
from test_gemini_batch import _env, keys, make_images, run, serve  # noqa: F401 - fixtures


def test_cancelled_jobs_report_resubmitted_then_dead_lettered(tmp_path, serve, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="textok")
    n = 4
    data = make_images(tmp_path / "data", n)
    fake = serve(job_script=lambda i, name: JobPlan(end="cancel"))
    out = tmp_path / "out"
    run(data, out, fake, batch={"wait": True, "max_attempts": 2})
    assert_each_key_once(out, keys(n))
    assert len(read_table(out, "dead_letter")) == n
    lines = [r.getMessage() for r in caplog.records if "ended JOB_STATE_CANCELLED" in r.getMessage()]
    assert len(lines) == 2, lines
    assert f"{n} key(s) will be resubmitted, 0 dead-lettered" in lines[0]
    assert f"0 key(s) will be resubmitted, {n} dead-lettered after --batch-max-attempts 2" in lines[1]
