"""The README's runnable command blocks run, as written, on every `make test` (issue 21): a
doctest for the shell, so the README cannot drift from what the commands do.

A block runs when the comment right above its fence says so:

    <!-- readme-test: run
      replace: hf download google/t5-v1_1-xl --local-dir models/t5-v1_1-xl => tiny-t5 models/t5-v1_1-xl
      replace: --steps 1500 => --steps 3
    -->
    ```bash
    textok ...
    ```

Each `replace: A => B` is a literal substitution on the block's commands (continuation lines
joined): CI sizes (fewer images and steps) and the two things CI cannot do, download weights
(`tiny-vlm FAMILY DIR`, `tiny-t5 DIR` build tiny random models offline into the same folder
instead, tests/tiny_vlms.py and tests/helpers.py) -- every command the reader sees otherwise runs
unchanged, in order, in one fresh working directory. `textok ...` lines run in this process
through the real CLI (as `textok` would, minus a Python start per line), `python -c` lines are
executed, and anything else fails the test, so a new kind of line must be taught here first.
Blocks without the comment (ImageNet, Gemini, Dataflow, GPUs) are not runnable offline; every
`textok` line in them is still checked against the real options by test_documented_commands.py.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from helpers import ROOT, make_random_t5
from textok.cli import main

BLOCK = re.compile(r"<!-- readme-test: run\b(?P<opts>.*?)-->\s*```bash\n(?P<body>.*?)```", re.S)


def runnable_blocks(path: str = os.path.join(ROOT, "README.md")) -> list[dict]:
    """[{"line": first line of the block, "replace": [(old, new)], "commands": [raw command]}]."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in BLOCK.finditer(text):
        replace = []
        for line in m["opts"].splitlines():
            line = line.strip()
            if line.startswith("replace:"):
                old, sep, new = line[len("replace:"):].partition("=>")
                assert sep, f"README.md: bad readme-test line {line!r} (expected 'replace: OLD => NEW')"
                replace.append((old.strip(), new.strip()))
        commands, current = [], ""
        for raw in m["body"].splitlines():
            stripped = raw.strip()
            if not current and (not stripped or stripped.startswith("#")):
                continue
            current += stripped[:-1].rstrip() + " " if stripped.endswith("\\") else stripped
            if not stripped.endswith("\\"):
                commands.append(current)
                current = ""
        blocks.append({"line": text[:m.start()].count("\n") + 1, "replace": replace, "commands": commands})
    return blocks


def ci_commands(block: dict) -> list[str]:
    """The block's commands with its replacements applied; each replacement must be used."""
    out = list(block["commands"])
    for old, new in block["replace"]:
        hits = [i for i, c in enumerate(out) if old in c]
        assert hits, f"README.md:{block['line']}: 'replace: {old}' matches no command of its block (stale?)"
        for i in hits:
            out[i] = out[i].replace(old, new)
    return out


def run_line(command: str) -> str:
    """Run one README command line here (see the module docstring); returns its output."""
    argv = shlex.split(command)
    if argv[0] == "textok":
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, f"`{command}` exited {result.exit_code}:\n{result.output[-3000:]}"
        return result.output
    if argv[:2] == ["python", "-c"] and len(argv) == 3:
        exec(compile(argv[2], "<README python -c>", "exec"), {"__name__": "__readme__"})
        return ""
    if argv[0] == "tiny-vlm" and len(argv) == 3:
        from tiny_vlms import BUILDERS

        BUILDERS[argv[1]](argv[2])
        return ""
    if argv[0] == "tiny-t5" and len(argv) == 2:
        from tiny_vlms import WORDS

        corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
        make_random_t5(argv[1], corpus, d_model=32, vocab_size=80)
        return ""
    raise AssertionError(f"README command `{command}` cannot run offline in CI: give its block a "
                         f"'replace:' line, or teach tests/test_readme_blocks.py to run it")


def test_the_readme_has_runnable_blocks_and_their_replacements_apply():
    blocks = runnable_blocks()
    assert blocks, "README.md lost its runnable quick-start block"
    for block in blocks:
        commands = ci_commands(block)
        assert not [c for c in commands if c.startswith(("hf ", "huggingface-cli "))], "CI cannot download"


def test_first_hour_runs_as_written(tmp_path, monkeypatch, caplog):
    """The quick start: local-VLM captions -> prepare (train + val shards) -> tokenizer -> eval on
    val -> export -> latents from the export -> DiT -> samples -> class accuracy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEXTOK_PROGRESS_SECONDS", "3600")
    (block,) = [b for b in runnable_blocks() if any("textok prepare" in c for c in b["commands"])]
    outputs = {}
    caplog.set_level("INFO")
    for command in ci_commands(block):
        outputs[command.split()[1] if command.startswith("textok ") else command.split()[0]] = run_line(command)
    # what the block promises, checked on disk
    train = {k for f in glob.glob("runs/demo/shards/train-*.parquet") for k in pq.read_table(f)["key"].to_pylist()}
    val = {k for f in glob.glob("runs/demo/shards/val-*.parquet") for k in pq.read_table(f)["key"].to_pylist()}
    assert train and val and not train & val
    summary = json.load(open("runs/demo/prepare_summary.json"))
    assert summary["finished"] and summary["caption_val"]["skipped_existing"] == len(val)  # step 3's captions reused
    assert json.load(open("runs/tok/eval/eval.json"))["num_samples"] == len(val)
    assert os.path.isfile("models/textok-tiny-n4/text_encoder.json")
    pool_classes = set(pq.read_table("runs/demo/pools/val.parquet")["label"].to_pylist())
    assert np.load("runs/samples/samples.npz")["images"].shape[0] == len(pool_classes)  # --classes all --n 1
    assert "accuracy" in outputs["class-accuracy"]
    # no warning about what the reader did not choose (the tiny preset has no perceptual term by design)
    trainer_warnings = [r.getMessage() for r in caplog.records
                        if r.levelno >= 30 and r.name.startswith(("textok.trainer", "textok.progress"))]
    assert not trainer_warnings, trainer_warnings
    progress = [r.getMessage() for r in caplog.records if r.name == "textok.progress"]
    assert "train-tokenizer: start, 3 steps -> runs/tok" in progress  # log lines without a terminal
    assert any(m.startswith("train-tokenizer: done, 3/3 steps") for m in progress)


@pytest.mark.parametrize("line, argv", [("textok caption --x \\\n    --y 1", None)])
def test_continuation_lines_join(tmp_path, line, argv):
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- readme-test: run\n  replace: --y 1 => --y 2\n-->\n```bash\n# c\n{line}\n```\n")
    (block,) = runnable_blocks(str(readme))
    assert ci_commands(block) == ["textok caption --x --y 2"]
