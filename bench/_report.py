"""Shared by the benches: print the result JSON and, when asked, write it to a file too."""
from __future__ import annotations

import json
import os


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text + "\n")
