"""One copy of an expensive object per worker process, through Beam's `Shared`.

    from textok.pipeline.worker_shared import per_process
    model = per_process(("local-vlm", model_id, "cuda", "bfloat16"), lambda: load(model_id))

Beam runs several DoFn instances (threads) per worker process, and each would otherwise load
its own copy of a model onto the same GPU, or open its own HTTP connection pool.
`apache_beam.utils.shared.Shared` keeps one weakly referenced instance per handle and keeps the
most recently acquired one alive between bundles (see its module docstring). A handle is
normally created when the pipeline is built and pickled into the DoFn; captioners are built
*inside* the DoFn from a name and options, so instead we keep one handle per key here, in the
module — which, like the handle, exists once per worker process. The key says what the object
is (model id, device, dtype; endpoint and a digest of the key...), so instances that need the
same object share it and instances that need another get their own. A forked child keys by
its own pid: a CUDA context, an event loop or a socket must not cross a fork.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, Hashable, TypeVar

T = TypeVar("T")

_HANDLES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


class Held:
    """A weak-referenceable box (Shared holds weak references; tuples and dicts cannot be)."""

    __slots__ = ("value", "__weakref__")

    def __init__(self, value: Any):
        self.value = value


def per_process(key: Hashable, build: Callable[[], T], on_release: Callable[[T], Any] | None = None) -> Held:
    """The `Held(build())` shared by every caller in this process that passes an equal `key`.

    Keep the returned box (not only its value) for as long as the object is used: when no
    caller holds it any more, Beam may drop it and the next caller builds a fresh one.
    `build` runs at most once at a time per key (Shared's control block serialises it).
    `on_release(value)` runs when the box is garbage-collected (e.g. to close a connection pool)."""
    from apache_beam.utils.shared import Shared

    full_key = (os.getpid(), key)
    with _LOCK:
        handle = _HANDLES.get(full_key)
        if handle is None:
            handle = _HANDLES[full_key] = Shared()
    def make() -> Held:
        held = Held(build())
        if on_release is not None:
            weakref.finalize(held, on_release, held.value)
        return held

    return handle.acquire(make)


def forget_all() -> None:
    """Drop every handle (tests; a notebook that wants fresh clients)."""
    with _LOCK:
        _HANDLES.clear()
