"""Every `textok ...` command shown in a module docstring, the README, the Makefile or the demo
script names a real command and only options that command (or, for pipeline commands, Beam) knows."""
from __future__ import annotations

import argparse
import os
import re
import shlex

from textok.cli import main
from textok.pipeline.beam_utils import beam_leftovers
from textok.pipeline.commands.options import BeamCommand

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_COMMAND = re.compile(r"(?:^|[\s`(])(?:python -m |-m )?textok ([a-z][a-z-]+)\b(.*)")


def documented_commands():
    """(file, line number, command, args) of every textok invocation, continuation lines joined."""
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "build", "__pycache__")]
        for name in files:
            if not name.endswith((".py", ".md", ".sh")) and name != "Makefile":
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            i = 0
            while i < len(lines):
                start, text = i, lines[i]
                while text.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                m = _COMMAND.search(text)
                if m and m.group(1) in main.commands:
                    rest = m.group(2).split("#")[0].split("`")[0].split(";")[0].split("&&")[0].split("|")[0]
                    try:
                        args = shlex.split(rest)
                    except ValueError:  # prose, not a command line
                        continue
                    yield os.path.relpath(path, ROOT), start + 1, m.group(1), args


def _known_to_beam(flag: str, args: list[str]) -> bool:
    """Beam knows `flag`, with the options of the runner the same command line names (--runner dask)."""
    from textok.pipeline.runners import runner_arg

    runner = runner_arg(args)
    try:
        return not beam_leftovers([*(["--runner", runner] if runner else []), flag, "x"])
    except argparse.ArgumentError:  # Beam knows the option, "x" is just not one of its values
        return True


def test_documented_commands_use_existing_options():
    seen, problems = 0, []
    for where, line, name, args in documented_commands():
        seen += 1
        cmd = main.commands[name]
        ours = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        for i, arg in enumerate(args):
            if not arg.startswith("--"):
                continue
            flag, _, value = arg.partition("=")
            if flag in ours:
                choices = getattr(ours[flag].type, "choices", None)
                value = value or (args[i + 1] if i + 1 < len(args) else "")
                if choices and value not in choices and not value.startswith(("$", "...")):
                    problems.append(f"{where}:{line}: textok {name} {flag} {value}: not one of {list(choices)}")
                continue
            if flag == "--help":
                continue
            if isinstance(cmd, BeamCommand) and _known_to_beam(flag, args):
                continue
            problems.append(f"{where}:{line}: textok {name} has no option {flag}")
    assert seen > 30  # the scan found the docs
    assert not problems, "\n".join(problems)


def test_words_that_look_like_commands_are_commands():
    """A back-quoted `textok <word>` in the docs where the word is no command is a renamed or removed one."""
    known = set(main.commands)
    pattern = re.compile(r"`textok ([a-z][a-z-]+)")
    bad = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "build", "__pycache__")]
        for name in files:
            if name.endswith((".py", ".md")):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    bad += [f"{name}: textok {w}" for w in pattern.findall(f.read()) if w not in known]
    assert not bad, bad
