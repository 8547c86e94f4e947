"""One writer per output folder: the lease every writing command takes before its first write.

    from textok.lease import hold_lease
    with hold_lease("s3://bkt/run/caption/train", "caption") as lease:  # refused if another run holds it
        ...                                                             # renewed in the background
        lease.check()                     # before a write that must be ours (compaction, the batch ledger)

    textok caption ... --force-unlock     # clear a STALE lease (its holder died), then run

The lease is OUTPUT/_textok.lease, a small JSON record: a random token, the command, host, pid,
start time and a heartbeat the holder renews every ttl/4 s (ttl 120 s by default;
TEXTOK_LEASE_TTL_S changes it). A second writer is refused with the holder's details. A lease
is *stale* when its heartbeat is older than its ttl, or when its holder ran on this host and
that pid is gone. A holder that is *provably dead* (same host, same boot, same pid namespace,
and its pid is gone: a kill -9, an OOM kill, a closed laptop lid that rebooted nothing) is taken
over at once, with a warning naming it, so rerunning a killed command just resumes. Any other
stale lease (a heartbeat that stopped on another host, a lease from before a reboot, another
container) is never taken over silently (the holder may be alive behind a clock skew or a network
split): the refusal says it looks stale, and `--force-unlock` clears it. `--force-unlock` never
clears a live lease.
Nested takes in one process (`textok prepare` holds OUTPUT, then its encode stage takes it
again) share one lease.

How the lease is taken atomically on each storage, and what that guarantees:
- local disk: the record goes to a temp file that is then hard-linked to the lease name;
  `link` fails when the name exists (POSIX create-if-absent, atomic even on NFSv3+), and the
  record appears whole. Without hard links (some FUSE mounts): O_CREAT|O_EXCL. Exactly one
  taker wins.
- S3 (and S3-compatible servers that implement conditional writes): PutObject with
  `If-None-Match: *` — the server refuses every taker but the first with 412. Renewals put with
  `If-Match: <etag>`, so a holder that lost its lease (cleared with --force-unlock) can never
  overwrite the new holder's record. Every take is read back too: a server that ignores the
  header is caught when the read-back shows another token.
- other Beam filesystems (gs://, hdfs://; Beam's FileSystems has no conditional write):
  verify-after-write. When no lease exists, write ours, wait `settle` s (default 2,
  TEXTOK_LEASE_SETTLE_S), read it back: ours -> held; another's -> refused. GCS reads are
  strongly consistent, so two racing takers can both believe they hold the lease only if one
  of them needed more than `settle` seconds between seeing "no lease" and its write becoming
  visible. That is a narrow window for a tiny JSON upload, not an impossibility: it is a
  best-effort lock, and the one-line refusal tells the user which run holds the folder.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Iterator, Optional

from textok import storage as rio

log = logging.getLogger("textok.lease")

LEASE_NAME = "_textok.lease"
DEFAULT_TTL_S = 120.0
DEFAULT_SETTLE_S = 2.0

_force_unlock = False
_held: dict[str, "Lease"] = {}           # lease path -> the lease this process holds
_live_tokens: set[str] = set()           # tokens of every lease this process holds now
_held_lock = threading.Lock()


class LeaseHeld(ValueError):
    """Another writer holds the output folder (a user-facing one-line error)."""


class LeaseLost(ValueError):
    """This process's lease was cleared or taken over while it ran: stop writing."""


def set_force_unlock(flag: bool) -> None:
    """`--force-unlock`: leases this process meets that are stale get cleared (never live ones)."""
    global _force_unlock
    _force_unlock = bool(flag)


def lease_path(folder: str) -> str:
    return rio.join(folder, LEASE_NAME)


def _ttl() -> float:
    return float(os.environ.get("TEXTOK_LEASE_TTL_S", DEFAULT_TTL_S))


def _settle() -> float:
    return float(os.environ.get("TEXTOK_LEASE_SETTLE_S", DEFAULT_SETTLE_S))


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ storage backends
class _LocalStore:
    def __init__(self, path: str):
        self.path = path
        self.made: list[str] = []  # folders the take created: removed again if the run leaves them empty

    def create(self, data: bytes) -> Optional[str]:
        """Write the record if no lease exists; "" when created, None when one exists."""
        from textok.atomic import temp_path

        folder = os.path.dirname(self.path)
        missing = folder
        while missing and not os.path.exists(missing):
            self.made.insert(0, missing)
            missing = os.path.dirname(missing)
        os.makedirs(folder, exist_ok=True)
        tmp = temp_path(self.path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return ""
        except FileExistsError:
            return None
        except OSError:  # no hard links here: O_EXCL is the atomic create-if-absent
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return ""
        finally:
            os.remove(tmp)

    def read(self) -> tuple[Optional[bytes], str]:
        try:
            with open(self.path, "rb") as f:
                return f.read(), ""
        except FileNotFoundError:
            return None, ""

    def replace(self, data: bytes, etag: str) -> Optional[str]:
        from textok.atomic import temp_path

        tmp = temp_path(self.path)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)
        return ""

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        for folder in reversed(self.made):  # a run that failed before writing leaves no empty output folder
            with contextlib.suppress(OSError):
                os.rmdir(folder)


class _S3Store:
    """Conditional writes: If-None-Match on create, If-Match on renewal."""

    def __init__(self, path: str):
        self.path = path
        self.bucket, self.key = rio.split_bucket(path)
        self.client = rio.s3_client()

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def create(self, data: bytes) -> Optional[str]:
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
        except Exception as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            if self._code(e) in ("NoSuchBucket", "404"):
                raise ValueError(f"{self.path}: cannot write there (bucket {self.bucket!r} does not exist); create "
                                 "the bucket or fix --output") from None
            raise
        return r.get("ETag", "")

    def read(self) -> tuple[Optional[bytes], str]:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None, ""
            raise
        return r["Body"].read(), r.get("ETag", "")

    def replace(self, data: bytes, etag: str) -> Optional[str]:
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **({"IfMatch": etag} if etag else {}))
        except Exception as e:
            if self._code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return None
            raise
        return r.get("ETag", "")

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _BeamStore:
    """Verify-after-write through Beam's FileSystems (see the module docstring for its guarantee)."""

    def __init__(self, path: str):
        self.path = path

    def create(self, data: bytes) -> Optional[str]:
        if rio.exists(self.path):
            return None
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        with FileSystems.create(self.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        time.sleep(_settle())  # let a racing taker's write land; the caller reads back
        return ""

    def read(self) -> tuple[Optional[bytes], str]:
        try:
            return rio.read_bytes(self.path), ""
        except Exception:
            if not rio.exists(self.path):
                return None, ""
            raise

    def replace(self, data: bytes, etag: str) -> Optional[str]:
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        with FileSystems.create(self.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)
        return ""

    def delete(self) -> None:
        if rio.exists(self.path):
            rio.remove(self.path)


def _store(path: str):
    if not rio.is_remote(path):
        return _LocalStore(path)
    if path.startswith("s3://"):
        return _S3Store(path)
    return _BeamStore(path)


# ------------------------------------------------------------------ records
def _parse(raw: Optional[bytes]) -> Optional[dict[str, Any]]:
    if raw is None:
        return None
    try:
        rec = json.loads(raw)
        if isinstance(rec, dict) and "token" in rec:
            return rec
    except ValueError:
        pass
    return {"token": None, "unreadable": raw[:80].decode(errors="replace")}


def read_lease(folder: str) -> Optional[dict[str, Any]]:
    """The lease record of `folder` (None when free)."""
    return _parse(_store(lease_path(folder)).read()[0])


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False
    return False


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def provably_dead(rec: dict[str, Any]) -> bool:
    """True only when the holder ran on this very machine instance and its pid is gone: same host
    name, same boot, same pid namespace (a container with the same host name but its own pids
    would otherwise look dead). Leases written without boot/namespace ids are never 'provably' dead."""
    if rec.get("token") is None or rec.get("host") != socket.gethostname():
        return False
    boot, ns = _boot_id(), _pid_namespace()
    if not boot or not ns or rec.get("boot_id") != boot or rec.get("pid_ns") != ns:
        return False
    pid = int(rec.get("pid", -1))
    return pid > 0 and pid != os.getpid() and _pid_gone(pid)


def staleness(rec: dict[str, Any], now: Optional[float] = None) -> Optional[str]:
    """Why the lease looks abandoned, or None when its holder looks alive."""
    if rec.get("token") is None:
        return f"the lease file is unreadable ({rec.get('unreadable', '')!r})"
    now = time.time() if now is None else now
    age = now - float(rec.get("heartbeat_unix", 0.0))
    ttl = float(rec.get("ttl_s", DEFAULT_TTL_S))
    if rec.get("host") == socket.gethostname():
        pid = int(rec.get("pid", -1))
        if pid == os.getpid():
            if rec.get("token") in _live_tokens:
                return None
            return f"pid {pid} on this host is this process, which does not hold it: its holder is gone"
        if pid > 0 and _pid_gone(pid):
            return f"pid {pid} is no longer running on this host"
    if age > ttl:
        return f"its heartbeat is {age:.0f} s old (ttl {ttl:.0f} s)"
    return None


def describe(rec: dict[str, Any], now: Optional[float] = None) -> str:
    if rec.get("token") is None:
        return "an unreadable lease file"
    now = time.time() if now is None else now
    age = now - float(rec.get("heartbeat_unix", 0.0))
    return (f"`textok {rec.get('command', '?')}` (pid {rec.get('pid', '?')} on host {rec.get('host', '?')}, "
            f"started {rec.get('started_at', '?')}, last heartbeat {age:.0f} s ago)")


# ------------------------------------------------------------------ the lease
class Lease:
    def __init__(self, folder: str, command: str, ttl_s: float):
        self.folder, self.command, self.ttl_s = folder, command, ttl_s
        self.path = lease_path(folder)
        self.token = uuid.uuid4().hex
        self.started_unix = time.time()
        self.depth = 0
        self.lost: Optional[str] = None
        self._etag = ""
        self._store = _store(self.path)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_ok = self.started_unix

    def record(self) -> dict[str, Any]:
        now = time.time()
        return {"token": self.token, "command": self.command, "host": socket.gethostname(), "pid": os.getpid(),
                "started_at": _iso(self.started_unix), "started_unix": self.started_unix,
                "heartbeat_at": _iso(now), "heartbeat_unix": now, "ttl_s": self.ttl_s,
                "boot_id": _boot_id(), "pid_ns": _pid_namespace()}

    def _data(self) -> bytes:
        return (json.dumps(self.record(), indent=1, sort_keys=True) + "\n").encode()

    # -- take ------------------------------------------------------------------------------
    def take(self) -> None:
        for _ in range(3):  # a cleared stale lease may be retaken by a racer: then that one wins
            etag = self._store.create(self._data())
            if etag is not None:
                raw, read_etag = self._store.read()
                rec = _parse(raw)
                if rec is not None and rec.get("token") == self.token:
                    self._etag = read_etag or etag
                    _live_tokens.add(self.token)
                    self._start_heartbeat()
                    return
                raise LeaseHeld(self._refusal(rec or {}, racing=True))
            rec = _parse(self._store.read()[0])
            if rec is None:
                continue  # released between our create and our read: try again
            stale = staleness(rec)
            if stale is None:
                if _force_unlock:
                    raise LeaseHeld(f"{self.folder}: --force-unlock clears only a stale lease, and this one is live: "
                                    f"held by {describe(rec)}. Stop that run first, or wait for it to end.")
                raise LeaseHeld(self._refusal(rec))
            if provably_dead(rec):
                # Re-read just before deleting: a racer that took over first has written its own token,
                # which must not be deleted (both racers would then believe they hold the folder).
                again = _parse(self._store.read()[0])
                if again is None or again.get("token") != rec.get("token"):
                    continue
                log.warning("%s: taking over the lease of %s: %s (same host, same boot)", self.folder, describe(rec),
                            stale)
                self._store.delete()
                continue
            if not _force_unlock:
                raise LeaseHeld(f"{self.folder}: locked by {describe(rec)}, and the lease looks stale: {stale}. "
                                f"If no other textok run is writing this folder, rerun with --force-unlock "
                                f"(or `textok clean {self.folder} --force-unlock`).")
            log.warning("%s: clearing the stale lease of %s (%s)", self.folder, describe(rec), stale)
            self._store.delete()
        raise LeaseHeld(f"{self.folder}: could not take the writer lease ({self.path}): another run keeps taking it")

    def _refusal(self, rec: dict[str, Any], racing: bool = False) -> str:
        who = describe(rec) if rec.get("token") else "another run"
        return (f"{self.folder}: another writer holds this output folder: {who}"
                f"{' (it took the lease at the same moment)' if racing else ''}. One writer per output folder: "
                f"wait for that run to end, or write to another --output.")

    # -- heartbeat ---------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.folder}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception as e:  # a network blip: keep trying until the ttl runs out
                log.warning("%s: renewing the writer lease failed (%s: %s)", self.folder, type(e).__name__, e)
                if time.time() - self._last_ok > self.ttl_s and not self.lost:
                    self.lost = f"no renewal succeeded for {self.ttl_s:.0f} s"

    def renew(self) -> None:
        rec = _parse(self._store.read()[0])
        if rec is None or rec.get("token") != self.token:
            self.lost = "cleared" if rec is None else f"taken over by {describe(rec)}"
            log.error("%s: this run lost its writer lease (%s)", self.folder, self.lost)
            self._stop.set()
            return
        etag = self._store.replace(self._data(), self._etag)
        if etag is None:
            self.lost = "replaced while renewing"
            self._stop.set()
            return
        self._etag = etag or self._etag
        self._last_ok = time.time()

    def check(self) -> None:
        """Raise LeaseLost when this run no longer holds the folder (cleared by --force-unlock elsewhere)."""
        if self.lost:
            raise LeaseLost(f"{self.folder}: this run lost its writer lease ({self.lost}); stopped before writing "
                            "more. Another run may be writing this folder: check `textok clean` / the lease file "
                            f"{self.path}")

    def release(self) -> None:
        _live_tokens.discard(self.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        with contextlib.suppress(Exception):  # never fail a finished run on its way out
            rec = _parse(self._store.read()[0])
            if rec is not None and rec.get("token") == self.token:
                self._store.delete()


@contextlib.contextmanager
def hold_lease(folder: str, command: str, ttl_s: Optional[float] = None) -> Iterator[Lease]:
    """Take (or re-enter) the writer lease of `folder` for the block; see the module docstring."""
    if not rio.is_remote(folder):
        folder = os.path.abspath(folder)
    path = lease_path(folder)
    with _held_lock:
        lease = _held.get(path)
    if lease is None:
        rio.check_destination(folder)
        lease = Lease(folder, command, ttl_s or _ttl())
        lease.take()
        with _held_lock:
            _held[path] = lease
    lease.depth += 1
    try:
        yield lease
    finally:
        lease.depth -= 1
        if lease.depth == 0:
            with _held_lock:
                _held.pop(path, None)
            lease.release()


def held(folder: str) -> Optional[Lease]:
    """The lease this process holds on `folder`, if any."""
    if not rio.is_remote(folder):
        folder = os.path.abspath(folder)
    with _held_lock:
        return _held.get(lease_path(folder))
