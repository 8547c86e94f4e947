"""textok.progress: log lines with count, rate and ETA off a terminal; a tqdm bar on one; Beam
stages count into the launcher's counter; the CLI shows textok's INFO lines by default."""
from __future__ import annotations

import io
import logging
import threading

import pytest
from click.testing import CliRunner

from textok import progress as progress_mod
from textok.progress import Progress, open_stage, progress, stage_progress


@pytest.fixture
def every_log(monkeypatch):
    monkeypatch.setenv("TEXTOK_PROGRESS_SECONDS", "0")  # a line per update


def test_log_lines_carry_count_rate_eta_and_postfix(every_log, caplog, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="textok.progress"):
        bar = Progress("encode", total=100, unit="captions", terminal=False)
        now[0] = 10.0
        bar.update(25)  # the first update: the rate since the start, 2.5/s; 75 left -> 30 s
        bar.set_postfix(loss=0.123456)
        now[0] = 15.0
        bar.update(25)  # from the first update on (start-up excluded): 25 in 5 s
        now[0] = 20.0
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encode: start, 100 captions"
    assert lines[1] == "encode: 25/100 captions (25%), 2.5 captions/s, ETA 30s"
    assert lines[2] == "encode: 50/100 captions (50%), 5 captions/s, ETA 10s, loss=0.1235"
    assert lines[3].startswith("encode: done, 50/100 captions (50%), 2.5 captions/s") and lines[3].endswith("in 20s")


def test_log_lines_at_start_each_tenth_and_end_and_disabled_counts_nothing(caplog, monkeypatch):
    """Issue 21: a cluster log (no terminal) says what starts, where it goes, each 10 % and a summary."""
    monkeypatch.setenv("TEXTOK_PROGRESS_SECONDS", "3600")  # no time-based lines: milestones only
    with caplog.at_level(logging.INFO, logger="textok.progress"):
        with Progress("train", total=100, unit="steps", terminal=False, output="runs/tok") as bar:
            for _ in range(100):
                bar.update()
        quiet = Progress("rank1", total=10, enabled=False)
        quiet.update(5)
        quiet.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "train: start, 100 steps -> runs/tok"
    assert [line.split(",")[0] for line in lines[1:-1]] == [f"train: {k}/100 steps ({k}%)" for k in range(10, 100, 10)]
    assert lines[-1].startswith("train: done, 100/100 steps (100%)")
    assert quiet.count == 0


def test_log_every_sets_the_interval(caplog, monkeypatch):
    from textok.cli import main

    monkeypatch.setenv("TEXTOK_PROGRESS_SECONDS", "3600")
    monkeypatch.setenv("TEXTOK_PROGRESS_EVERY", "25")  # what `textok --log-every 25 ...` sets
    with caplog.at_level(logging.INFO, logger="textok.progress"):
        with Progress("encode", total=100, unit="captions", terminal=False, initial=10) as bar:
            for _ in range(18):
                bar.update(5)
    lines = [r.getMessage().split(",")[0] for r in caplog.records]
    assert lines == ["encode: start", "encode: 25/100 captions (25%)", "encode: 50/100 captions (50%)",
                     "encode: 75/100 captions (75%)", "encode: done"]
    assert caplog.records[0].getMessage() == "encode: start, 90 of 100 captions"  # a resumed run
    r = CliRunner().invoke(main, ["--log-every", "ten", "inspect", "x"])
    assert r.exit_code == 2 and "give a count (500) or a percentage" in r.output


def test_terminal_gets_a_tqdm_bar(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(progress_mod.sys, "stderr", err)
    assert list(progress(range(7), "sample", unit="image", enabled=True)) == list(range(7))  # no tty: log only
    assert err.getvalue() == ""
    bar = Progress("sample", total=7, unit="image", terminal=True)
    bar.update(7)
    bar.close()
    assert "sample: 100%" in err.getvalue() and "7/7" in err.getvalue()


def test_stage_counter_is_shared_in_process_and_per_worker_elsewhere(every_log, caplog):
    with caplog.at_level(logging.INFO, logger="textok.progress"):
        with open_stage("encode", 6, "captions") as bar:
            threads = [threading.Thread(target=lambda: stage_progress("encode").update(2)) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert bar.count == 6
        orphan = stage_progress("encode", "captions")  # a worker process: its own counter, no total
    assert orphan is not bar and orphan.total is None and "(worker" in orphan.desc
    assert any(r.getMessage().startswith("encode: done, 6/6 captions (100%)") for r in caplog.records)
    progress_mod._stages.clear()


def test_cli_shows_textok_info_by_default_and_keeps_third_parties_quiet():
    from textok.cli import main

    @main.command("_probe", hidden=True)
    def probe():
        logging.getLogger("textok.probe").info("textok says")
        logging.getLogger("someone.else").info("library says")
        print(logging.getLogger("textok").getEffectiveLevel(), logging.getLogger("someone.else").getEffectiveLevel())

    try:
        out = CliRunner().invoke(main, ["_probe"]).output
        assert out.split()[-2:] == [str(logging.INFO), str(logging.getLogger().level)]
        assert logging.getLogger().level == logging.WARNING
        out = CliRunner().invoke(main, ["-vv", "_probe"]).output
        assert out.split()[-2:] == [str(logging.DEBUG), str(logging.DEBUG)]
    finally:
        main.commands.pop("_probe")
        logging.getLogger().setLevel(logging.WARNING)


def test_a_stage_that_fails_says_stopped_not_done(caplog):
    """A run that ends in an error must not print a `done` summary just above its `Error:` line."""
    import logging

    from textok.progress import open_stage

    caplog.set_level(logging.INFO, logger="textok.progress")
    try:
        with open_stage("caption-fail-test", 10, "images") as bar:
            bar.update(3)
            raise RuntimeError("worker died")
    except RuntimeError:
        pass
    lines = [r.getMessage() for r in caplog.records if "caption-fail-test" in r.getMessage()]
    assert any("stopped, 3/10" in ln for ln in lines) and not any(": done," in ln for ln in lines), lines
