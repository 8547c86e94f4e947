"""The captioner registry resolves every backend, and no backend imports the registry back."""
from __future__ import annotations

import ast
import pathlib

import pytest

from textok.pipeline.captioning.captioners import BACKENDS, OPTION_KEYS, build_captioner

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pipeline" / "captioners"


@pytest.mark.parametrize("name,options", [
    ("provided", {}), ("template", {}), ("gemini", {"model_id": "gemini-2.5-flash"}),
    ("local", {"model_id": "some/model"}),
    ("openai", {"model_id": "m", "openai_base_url": ["http://127.0.0.1:9/v1"]}),
])
def test_every_backend_builds_without_setup(name, options):
    cap = build_captioner(name, options)
    assert cap.backend == name and name in BACKENDS
    assert set(options) <= set(OPTION_KEYS)


def test_backends_never_import_the_registry():
    """The registry imports backends lazily by name; a backend importing the registry (for a
    helper such as check_options) would make the two modules import each other."""
    for path in PACKAGE.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("textok.pipeline.captioning.captioners", "pipeline.captioning.captioners"), path.name
                assert not (node.level == 1 and node.module is None), path.name   # `from . import x`
