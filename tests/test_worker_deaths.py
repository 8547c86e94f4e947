"""A Beam multi_processing worker killed mid-run fails the run at once (pipeline/worker_deaths.py).

The pipeline's last step sends nothing back to the runner, as the caption graph's
`ParDo(CaptionChunkFn)`: without the watcher, Beam waits for that bundle's answer forever.
"""
from __future__ import annotations

import os
import subprocess
import sys

from textok.errors import user_error
from textok.pipeline.worker_deaths import WorkerDiedError, _death_message

SCRIPT = """
import logging, os, signal, sys
import apache_beam as beam
from textok.pipeline.beam_utils import make_pipeline
if sys.argv[1] == "debug":  # -vv: Beam's own worker command, not the quiet one that logs to a file
    logging.getLogger().setLevel(logging.DEBUG)
p = make_pipeline(["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"])
_ = (p | beam.Create(range(8)) | beam.Reshuffle()
     | beam.Map(lambda x: os.kill(os.getpid(), signal.SIGKILL)))  # the worker dies; nothing flows back
try:
    p.run().wait_until_finish()
except Exception as e:
    print("RAISED", type(e).__name__, e)
    sys.exit(3)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=120)


def test_a_killed_worker_fails_the_run_instead_of_hanging_it():
    for mode in ("quiet", "debug"):
        res = _run(mode)
        assert res.returncode == 3, (mode, res.returncode, res.stderr[-2000:])
        assert "RAISED WorkerDiedError" in res.stdout and "SIGKILL" in res.stdout, res.stdout
        if mode == "quiet":  # Beam's stream readers broken by the death print no thread traceback below -vv
            assert "Exception in thread" not in res.stderr, res.stderr[-2000:]


def test_the_death_reads_as_one_line_that_says_to_rerun():
    shell = _death_message("worker_3", "Worker subprocess exited with return code 137")
    assert "worker_3" in shell and "killed by SIGKILL" in shell and "rerun the same command" in shell
    assert "killed by SIGKILL" in _death_message("worker_0", "Worker subprocess exited with return code -9")
    assert "exit status 2" in _death_message("worker_0", "Worker subprocess exited with return code 2")
    assert user_error(WorkerDiedError(shell)) == shell
