"""The built wheel ships one top-level name, `textok`; installed, `import pipeline` fails and
`import textok.pipeline` works."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_has_only_textok_at_the_top(tmp_path):
    # Build from a copy: setuptools leaves build/ and *.egg-info beside the sources.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "demo_out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("textok-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["textok"]
        z.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names} == {"textok", wheel.name.split("-py")[0] + ".dist-info"}
    for module in ("textok/cli.py", "textok/pipeline/encode/pipeline.py", "textok/trainer/models/textok.py",
                   "textok/schemas/shards.py", "textok/progress.py", "textok/errors.py"):
        assert module in names
    assert not any(n.startswith("textok/tests/") for n in names)

    # A fresh interpreter that sees only the unpacked wheel (and its dependencies in site-packages):
    # the old top-level names are gone, the package imports, the CLI answers.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "site")

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)

    for name in ("pipeline", "trainer", "schemas", "cli"):
        assert run(f"import {name}").returncode != 0, name
    p = run("import textok, textok.pipeline, textok.schemas.shards, textok.trainer; print(textok.__file__)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tmp_path / "site" / "textok" / "__init__.py")
