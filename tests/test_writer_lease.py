"""One writer per output folder (issue 19 items 3, 4, 5, 10, 11, 15, 16): the lease, two writers on
one output, a kill -9 of the holder, provenance from the batch ledger, result-key validation,
leftover cleanup, and the messages of the compaction race and of a corrupt ledger.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_writer_lease.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fake_gemini_batch import JobPlan
from test_caption_pipeline import PLUGIN, ROOT, _wait_for_parts, assert_each_key_once, make_folder, pythonpath, \
    read_table
from test_gemini_batch import FAKE_KEY, assert_captions_match_images, keys, killed_run, make_images, run, serve  # noqa: F401
from textok import lease as lease_mod
from textok.cli import main
from textok.lease import Lease, LeaseHeld, hold_lease, read_lease, set_force_unlock
from textok.pipeline.captioning import batch_ledger
from textok.pipeline.captioning.captioners import gemini
from textok.pipeline.captioning.store import CAPTIONS, SchemaError, list_table_files, open_parquet
from textok.schemas.common import KEY_META

HOLD = ("import sys, time; from textok.lease import hold_lease\n"
        "with hold_lease(sys.argv[1], 'caption'):\n"
        "    print('held', flush=True); time.sleep(600)\n")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    monkeypatch.delenv("TEXTOK_BATCH_FAULT", raising=False)
    gemini.reset_process_state()
    set_force_unlock(False)
    yield
    set_force_unlock(False)


def _holder(folder) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=pythonpath())
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held", proc.stderr.read().decode()[-2000:]
    return proc


# --------------------------------------------------------------------------- the lease itself

def test_second_writer_refused_with_owner_then_kill9_stale_message_then_force_unlock(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        rec = read_lease(str(out))
        assert {"token", "command", "host", "pid", "started_at", "heartbeat_at", "ttl_s"} <= set(rec)
        with pytest.raises(LeaseHeld, match=rf"another writer holds this output folder: `textok caption` "
                                            rf"\(pid {proc.pid} on host "):
            with hold_lease(str(out), "encode"):
                pass
        set_force_unlock(True)  # never clears a live lease
        with pytest.raises(LeaseHeld, match="--force-unlock clears only a stale lease, and this one is live"):
            with hold_lease(str(out), "encode"):
                pass
        set_force_unlock(False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The holder died without releasing, on this host, boot and pid namespace: provably dead, so the
    # next run takes the folder over at once (a killed command is rerun as it was) and releases it.
    r = CliRunner().invoke(main, ["clean", str(out)])
    assert r.exit_code == 0, r.output
    assert read_lease(str(out)) is None


def test_stale_lease_of_another_machine_instance_needs_force_unlock(tmp_path, monkeypatch):
    """A dead pid seen from another boot or pid namespace proves nothing: refused, then --force-unlock."""
    out = tmp_path / "out"
    proc = _holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    path = out / "_textok.lease"
    rec = json.loads(path.read_text())
    rec["pid_ns"] = "pid:[1]"  # as if written from another container sharing the host name
    path.write_text(json.dumps(rec))
    r = CliRunner().invoke(main, ["clean", str(out)])
    assert r.exit_code == 1 and r.output.count("Error:") == 1, r.output
    assert f"pid {proc.pid} is no longer running on this host" in r.output and "--force-unlock" in r.output
    r = CliRunner().invoke(main, ["clean", str(out), "--force-unlock"])
    assert r.exit_code == 0, r.output
    assert read_lease(str(out)) is None  # clean released the lease it took over


def test_lease_is_renewed_while_held_and_released_after(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTOK_LEASE_TTL_S", "0.4")
    with hold_lease(str(tmp_path), "encode") as lease:
        first = read_lease(str(tmp_path))["heartbeat_unix"]
        time.sleep(0.35)
        assert read_lease(str(tmp_path))["heartbeat_unix"] > first
        with hold_lease(str(tmp_path), "pools") as inner:  # nested take in one process: the same lease
            assert inner is lease
        lease.check()
    assert read_lease(str(tmp_path)) is None


def test_a_lease_cleared_under_a_live_holder_makes_it_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTOK_LEASE_TTL_S", "0.4")
    with hold_lease(str(tmp_path), "caption") as lease:
        os.remove(os.path.join(str(tmp_path), lease_mod.LEASE_NAME))
        time.sleep(0.3)
        with pytest.raises(lease_mod.LeaseLost, match="lost its writer lease"):
            lease.check()


def test_verify_after_write_lets_exactly_one_of_two_racing_takers_win(monkeypatch):
    """The generic object-store scheme (gs://, via Beam FileSystems): both see no lease, both write,
    both read back after the settle time; only the last writer's token is there."""
    import test_remote_write  # noqa: F401  registers memfs://, an object store in a dict

    monkeypatch.setenv("TEXTOK_LEASE_SETTLE_S", "0.3")
    folder = "memfs://bkt/race"
    takers = [Lease(folder, f"w{i}", 60.0) for i in range(2)]
    outcome: dict[int, str] = {}
    gate = threading.Barrier(2)

    def take(i):
        gate.wait()
        try:
            takers[i].take()
            outcome[i] = "held"
        except LeaseHeld as e:
            outcome[i] = str(e)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v == "held" for v in outcome.values()) == [False, True], outcome
    for t in takers:
        t.release()


# --------------------------------------------------------------------------- two writers

def test_two_sync_caption_runs_on_one_output_second_refused_first_completes(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6, corrupt=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "textok", "caption", "--input", data, "--output", str(out), "--captioner", PLUGIN,
           "--captioner-opt", "delay_s=0.15", "--batch-size", "2", "--commit-every", "2"]
    env = dict(os.environ, PYTHONPATH=pythonpath(), OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_parts(out, first)
        todo = [n for n in os.listdir(out) if n.startswith("_todo-")]
        second = CliRunner().invoke(main, ["caption", "--input", data, "--output", str(out), "--captioner", "template",
                                           "--template", "a {class_name} thing"])
        assert second.exit_code == 1 and f"pid {first.pid}" in second.output, second.output
        assert [n for n in os.listdir(out) if n.startswith("_todo-")] == todo  # the first run's to-do file intact
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert_each_key_once(out, [f"{c}/{i}" for c in ("red", "green", "blue") for i in range(6)])
    assert {r["captioner"] for r in read_table(out, CAPTIONS)} == {"colour:mean-rgb"}  # nothing of the refused run


def test_two_batch_runs_on_one_output_no_request_paid_twice(tmp_path, serve):  # noqa: F811
    n = 8
    data = make_images(tmp_path / "data", n)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=2.0, running_s=0.5))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=pythonpath(), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "textok", "caption", "--input", data, "--output", str(out), "--captioner", "gemini",
           "--model", "gemini-2.5-flash-lite", "--gemini-base-url", fake.url, "--gemini-mode", "batch",
           "--batch-max-requests", "4", "--wait", "--batch-poll-seconds", "0.1"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(fake.created_jobs()) < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert len(fake.created_jobs()) == 2
        with pytest.raises(LeaseHeld, match=f"pid {first.pid}"):
            run(data, out, fake, batch={"wait": True, "max_requests_per_job": 4})
        assert first.wait(timeout=60) == 0, first.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    s = run(data, out, fake, batch={"wait": True})
    assert s["batch"]["requests_submitted_this_run"] == 0
    assert sorted(fake.submitted_keys()) == sorted(keys(n))  # every key paid once
    assert_each_key_once(out, keys(n))


# --------------------------------------------------------------------------- batch provenance and the ledger

def test_rows_of_a_batch_job_carry_the_model_it_was_submitted_with(tmp_path, serve):  # noqa: F811
    n = 5
    data = make_images(tmp_path / "data", n)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=0.6, running_s=0.0))
    out = tmp_path / "out"
    s1 = run(data, out, fake, cap={"model_id": "gemini-2.5-flash-lite"})
    assert s1["batch"]["jobs_created_this_run"] == 1 and s1["captioned"] == 0
    time.sleep(0.7)
    s2 = run(data, out, fake, cap={"model_id": "gemini-2.5-pro", "temperature": 0.9}, batch={"wait": True})
    assert s2["captioned"] == n and s2["batch"]["requests_submitted_this_run"] == 0
    rows = read_table(out, CAPTIONS)
    assert {r["captioner"] for r in rows} == {"gemini:gemini-2.5-flash-lite"}
    for path in list_table_files(str(out), CAPTIONS):
        meta = json.loads(pq.read_schema(path).metadata[KEY_META])
        assert meta["model"] == "gemini-2.5-flash-lite" and meta["settings"]["temperature"] != 0.9
    assert [j.model for j in fake.created_jobs()] == ["gemini-2.5-flash-lite"]


def test_batch_status_only_reads_while_a_run_holds_the_folder(tmp_path, serve):  # noqa: F811
    data = make_images(tmp_path / "data", 3)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=0.0, running_s=30.0))
    out = tmp_path / "out"
    run(data, out, fake)
    jobs = os.path.join(str(out), "batch", "jobs")
    before = {f: open(os.path.join(jobs, f), "rb").read() for f in os.listdir(jobs)}
    holder = _holder(out)
    try:
        r = CliRunner().invoke(main, ["batch-status", str(out), "--gemini-base-url", fake.url])
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == 0 and "JOB_STATE_RUNNING" in r.output and "read-only" in r.output, r.output
    assert {f: open(os.path.join(jobs, f), "rb").read() for f in os.listdir(jobs)} == before
    # Free folder: the refresh is written, by read-modify-write that never reverts a collected job.
    set_force_unlock(True)
    with hold_lease(str(out), "test"):
        entry = batch_ledger.load_all(str(out))[0]
        batch_ledger.update(str(out), entry.id, lambda e: setattr(e, "phase", batch_ledger.COLLECTED))
    set_force_unlock(False)
    r = CliRunner().invoke(main, ["batch-status", str(out), "--gemini-base-url", fake.url, "--json", "--force-unlock"])
    assert r.exit_code == 0, r.output
    assert batch_ledger.load_all(str(out))[0].phase == batch_ledger.COLLECTED


def test_corrupt_ledger_entries_are_named_and_the_others_listed(tmp_path, serve):  # noqa: F811
    data = make_images(tmp_path / "data", 6)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=30.0))
    out = tmp_path / "out"
    run(data, out, fake, batch={"max_requests_per_job": 2})
    jobs = os.path.join(str(out), "batch", "jobs")
    names = sorted(os.listdir(jobs))
    with open(os.path.join(jobs, names[0]), "w") as f:
        f.write('{"id": "x", "trunc')
    with open(os.path.join(jobs, names[1])) as f:
        obj = json.load(f)
    obj["keys"] = None
    with open(os.path.join(jobs, names[1]), "w") as f:
        json.dump(obj, f)
    r = CliRunner().invoke(main, ["batch-status", str(out), "--no-refresh"])
    assert r.exit_code == 1 and "1 jobs, 2 requests" in r.output, r.output
    error = r.output.split("Error:")[1]
    assert names[0] in error and names[1] in error and "field 'keys' is NoneType" in error
    assert "Traceback" not in r.output


def test_non_string_and_conflicting_result_keys_are_dead_letters_not_crashes(tmp_path, serve):  # noqa: F811
    n = 6
    data = make_images(tmp_path / "data", n)
    fake = serve()
    real = fake._results
    mangled: set = set()

    def results(job):
        name = real(job)
        if name in mangled:
            return name
        lines = [json.loads(x) for x in fake.files[name].splitlines()]
        by_key = {x["key"]: x for x in lines}
        if "c0/0" in by_key:   # a list where the key should be: was a TypeError on every rerun
            by_key["c0/0"]["key"] = ["c0/0"]
        if "c1/1" in by_key:   # two different answers for one key: was "first wins", silently
            other = json.loads(json.dumps(by_key["c1/1"]))
            other["response"]["candidates"][0]["content"]["parts"][0]["text"] = "A purple elephant."
            lines.append(other)
        if "c2/2" in by_key:   # the same answer twice: harmless, kept once
            lines.append(by_key["c2/2"])
        fake.files[name] = b"\n".join(json.dumps(x).encode() for x in lines) + b"\n"
        mangled.add(name)
        return name

    fake._results = results
    out = tmp_path / "out"
    s = run(data, out, fake, batch={"wait": True, "max_attempts": 1})
    assert s["batch"]["bad_key_result_lines"] == 1 and s["batch"]["conflicting_result_keys"] == 1
    assert_each_key_once(out, keys(n))
    dead = {r["key"]: r for r in pq.read_table(list_table_files(str(out), "dead_letter")).to_pylist()}
    assert set(dead) == {"c0/0", "c1/1"}
    assert dead["c1/1"]["error_type"] == "conflicting_results"
    assert "A purple elephant." in dead["c1/1"]["message"] and "colour" in dead["c1/1"]["message"]
    assert dead["c0/0"]["error_type"] == "missing_from_results"
    assert "c2/2" in {r["key"] for r in read_table(out, CAPTIONS)}


# --------------------------------------------------------------------------- leftovers and messages

def test_kill_while_writing_a_request_file_then_clean_and_rerun_remove_it(tmp_path, serve):  # noqa: F811
    data = make_images(tmp_path / "data", 6)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=0.0, running_s=0.0))
    out = tmp_path / "out"
    killed_run(data, out, fake, "request_file")
    requests = os.path.join(str(out), "batch", "requests")
    orphans = os.listdir(requests)
    assert len(orphans) == 1 and not os.path.isdir(os.path.join(str(out), "batch", "jobs"))
    os.makedirs(os.path.join(str(out), "captions"))
    with open(os.path.join(str(out), "captions", ".tmp-0123456789abcdef0123456789abcdef-part-1.parquet.partial"),
              "wb") as f:
        f.write(b"half a part")
    r = CliRunner().invoke(main, ["clean", str(out), "--dry-run", "--force-unlock"])
    assert r.exit_code == 0 and "would remove 2 leftover file(s)" in r.output, r.output
    assert os.listdir(requests) == orphans
    r = CliRunner().invoke(main, ["clean", str(out), "--force-unlock"])
    assert r.exit_code == 0 and "removed 2 leftover file(s)" in r.output, r.output
    report = json.loads(r.stdout)
    assert {os.path.basename(x["path"]) for x in report["removed"]} == {orphans[0], ".tmp-0123456789abcdef0123456789"
                                                                        "abcdef-part-1.parquet.partial"}
    assert os.listdir(requests) == []
    s = run(data, out, fake, batch={"wait": True})
    assert s["captioned"] == 6 and sorted(fake.submitted_keys()) == sorted(keys(6))


def test_a_kills_request_file_is_removed_by_the_next_run(tmp_path, serve):  # noqa: F811
    data = make_images(tmp_path / "data", 4)
    fake = serve(job_script=lambda i, name: JobPlan(pending_s=0.0, running_s=0.0))
    out = tmp_path / "out"
    killed_run(data, out, fake, "request_file")
    set_force_unlock(True)
    s = run(data, out, fake, batch={"wait": True})
    assert s["captioned"] == 4 and os.listdir(os.path.join(str(out), "batch", "requests")) == []


def test_compaction_keeps_temp_files_newer_than_its_lease(tmp_path):
    from textok.pipeline.captioning.pipeline import run_caption
    from textok.pipeline.captioning.store import compact

    data = make_folder(tmp_path / "data", per_class=2, corrupt=False)
    out = str(tmp_path / "out")
    run_caption(data, out, captioner="template", captioner_options={"template": "a {class_name} one"})
    caps = os.path.join(out, "captions")
    old = os.path.join(caps, ".tmp-" + "a" * 32 + "-part-old.parquet.partial")
    new = os.path.join(caps, ".tmp-" + "b" * 32 + "-part-new.parquet.partial")
    with hold_lease(out, "caption") as lease:
        for path, t in ((old, lease.started_unix - 60), (new, lease.started_unix + 1)):
            open(path, "wb").close()
            os.utime(path, (t, t))
        compact(out)  # re-enters the lease: temps older than it are a dead writer's, newer ones are not
    assert not os.path.exists(old) and os.path.exists(new)


def test_a_part_that_vanishes_mid_read_is_explained_as_a_concurrent_writer(tmp_path):
    with pytest.raises(SchemaError) as e:
        open_parquet(str(tmp_path / "captions" / "part-1.parquet"))
    assert "another process compacted or cleaned this output folder" in str(e.value)
    assert "move it aside" not in str(e.value)
