"""Did a stage produce anything? A run whose inputs all (or mostly) ended in the dead letter is a
failure, not a success with an empty output.

    from textok.pipeline.run_outcome import check_dead_letters
    check_dead_letters("caption", done=0, dead=8, dead_letter_files=files, dead_letter_dir="out/dead_letter",
                       max_fraction=0.05, unit="images")     # raises TooManyDeadLetters

`caption`, `encode` and `prepare` call it after they have written their summary (so the summary
exists on failure too) with the counts on disk, so a rerun of a run that dead-lettered everything
still fails. The error is one line: how many, the top reasons with counts and one example
message, and the dead-letter folder to look in. `--max-dead-letter-fraction` (default 5 %) is the
share a user accepts (a few unreadable JPEGs in ImageNet are normal; a model that cannot generate
is not).
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

DEFAULT_MAX_DEAD_LETTER_FRACTION = 0.05


class TooManyDeadLetters(RuntimeError):
    """More of a stage's inputs ended in the dead letter than the user accepts (exit status 1)."""


def dead_letter_reasons(files: Sequence[str]) -> list[tuple[str, int, str]]:
    """(error_type, count, first message) of the dead-letter Parquet files, most frequent first."""
    import pyarrow.parquet as pq

    from textok.schemas.common import parquet_source

    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for path in files:
        table = pq.read_table(parquet_source(path), columns=["error_type", "message"])
        for error_type, message in zip(table["error_type"].to_pylist(), table["message"].to_pylist()):
            error_type = error_type or "unknown"
            counts[error_type] += 1
            example.setdefault(error_type, " ".join(str(message or "").split()))
    return [(t, n, example[t]) for t, n in counts.most_common()]


def outcome_message(stage: str, done: int, dead: int, reasons: Sequence[tuple[str, int, str]],
                    dead_letter_dir: str, max_fraction: float, unit: str = "inputs") -> str | None:
    """The one-line failure for these counts, or None when the run is acceptable."""
    total = done + dead
    if total == 0 or (done > 0 and dead <= max_fraction * total):
        return None
    top = ", ".join(f"{n}x {t}" for t, n, _ in reasons[:3]) or "no reasons recorded"
    example = reasons[0][2] if reasons else ""
    if len(example) > 200:
        example = example[:197] + "..."
    limit = "" if done == 0 else f", more than --max-dead-letter-fraction {max_fraction:g}"
    return (f"{stage}: {dead} of {total} {unit} ended in the dead letter ({100 * dead / total:.0f}%{limit}): "
            f"{top}" + (f" (e.g. {reasons[0][0]}: {example})" if example else "") + f"; see {dead_letter_dir}")


def check_dead_letters(stage: str, *, done: int, dead: int, dead_letter_files: Sequence[str],
                       dead_letter_dir: str, max_fraction: float = DEFAULT_MAX_DEAD_LETTER_FRACTION,
                       unit: str = "inputs") -> None:
    """Raise TooManyDeadLetters when every input, or more than `max_fraction` of them, is dead."""
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"--max-dead-letter-fraction must be in [0, 1], got {max_fraction}")
    if done + dead == 0 or (done > 0 and dead <= max_fraction * (done + dead)):
        return
    message = outcome_message(stage, done, dead, dead_letter_reasons(dead_letter_files), dead_letter_dir,
                              max_fraction, unit)
    if message:
        raise TooManyDeadLetters(message)


def check_caption_run(summary: dict, output_dir: str, max_fraction: float) -> None:
    """A caption run's outcome from its summary's on-disk counts (this run and earlier ones)."""
    from textok.pipeline.captioning.store import CAPTIONS, DEAD_LETTER, list_table_files, table_dir

    on_disk = summary.get("on_disk") or {}
    check_dead_letters("caption", done=int(on_disk.get(CAPTIONS, summary.get("captioned", 0))),
                       dead=int(on_disk.get(DEAD_LETTER, summary.get("dead_letter", 0))),
                       dead_letter_files=list_table_files(output_dir, DEAD_LETTER),
                       dead_letter_dir=table_dir(output_dir, DEAD_LETTER), max_fraction=max_fraction,
                       unit="images")


def check_encode_run(summary: dict, output_dir: str, max_fraction: float) -> None:
    """An encode run's outcome: its split's shard rows against its dead letters (encode-{split}-*)."""
    from textok import storage as rio
    from textok.schemas.common import list_parquet

    split = summary["split"]
    dl_dir = rio.join(output_dir, "dead_letter")
    files = [f for f in (list_parquet(dl_dir) if rio.is_dir(dl_dir) else [])
             if rio.basename(f).startswith(f"encode-{split}-")] if summary.get("dead_letter") else []
    check_dead_letters(f"encode [{split}]", done=int(summary.get("rows", 0)), dead=int(summary.get("dead_letter", 0)),
                       dead_letter_files=files, dead_letter_dir=dl_dir, max_fraction=max_fraction, unit="captions")
