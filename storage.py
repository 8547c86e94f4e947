"""File I/O of the pipeline stages on any Beam filesystem: local paths, gs://, s3://, hdfs://.

    from textok import storage as rio
    rio.set_filesystem_options(beam_args)      # the launcher sees --s3_endpoint_url etc. too
    rio.write_bytes_atomic(b"...", "s3://bucket/run/shards/train-00000-of-00004.parquet")
    list_parquet("s3://bucket/run/shards")   # textok.schemas.common

Local paths keep plain `os` calls (what the tests and a laptop run use); anything with a
scheme goes through `apache_beam.io.filesystems.FileSystems`, so every runner (Dataflow,
Flink, Spark, the in-process one) sees the same storage.

Atomic commit on an object store: a stage writes `NAME.parquet` as `.NAME.parquet.inflight-<uuid>`
(a name no reader's `*.parquet` glob takes), then renames it. On S3/GCS a rename is a
server-side copy + delete, and the copy creates the final object in one step: readers see
either no file or the whole file, never a partial upload. That is why "the file exists"
can keep meaning "the shard is done" for resume.

Beam's S3 filesystem builds a new boto3 Session and client for every operation (each `open`,
`exists`, `rename`, ...): a Session re-parses botocore's JSON service models, ~0.3-0.8 s on a busy
core. One image read per row made encoding to S3 15x slower than to local disk (bench/
encode_throughput.py --s3: 90 % of the S3 run was client construction). `share_s3_clients()`,
installed on import, makes Beam reuse one client per process and settings (boto3 clients are
thread-safe; Sessions are not, so none is shared).

Beam reads its S3/GCS settings from pipeline options. Workers get them from the runner; the
launcher's own calls (skip-if-done checks, the shard plan, summaries) need
`set_filesystem_options` with the same arguments.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import threading
import uuid
from typing import Any, Iterator, Sequence

INFLIGHT = ".inflight-"


class _SharedBoto3:
    """`boto3` as Beam's S3 client module sees it: `boto3.session.Session().client(**settings)`
    returns one client per (process, settings) instead of a new Session + client each call."""

    def __init__(self, real):
        self._real, self._clients, self._lock = real, {}, threading.Lock()
        self.session = self  # Beam calls boto3.session.Session()

    def Session(self):  # noqa: N802 (boto3's name)
        return self

    def client(self, **settings):
        key = (os.getpid(), tuple(sorted((k, repr(v)) for k, v in settings.items())))
        with self._lock:  # one construction per key; the Session stays local to it
            if key not in self._clients:
                self._clients[key] = self._real.session.Session().client(**settings)
            return self._clients[key]

    def __getattr__(self, name):
        return getattr(self._real, name)


def share_s3_clients() -> None:
    """Install `_SharedBoto3` under Beam's S3 client (idempotent; a no-op without boto3)."""
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:
        return
    if boto3_client.boto3 is not None and not isinstance(boto3_client.boto3, _SharedBoto3):
        boto3_client.boto3 = _SharedBoto3(boto3_client.boto3)


share_s3_clients()


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _filesystem_option_classes():
    from apache_beam.options.pipeline_options import GoogleCloudOptions, HadoopFileSystemOptions, S3Options

    return (S3Options, GoogleCloudOptions, HadoopFileSystemOptions)


def filesystem_args(beam_args: Sequence[str] = ()) -> list[str]:
    """The part of `beam_args` that configures storage (`--s3_*`, `--project`/GCS, `--hdfs_*`): what a
    command that runs no pipeline (`caption --gemini-mode batch`, `clean`) still needs."""
    import argparse

    args = list(beam_args)
    if not args:
        return []
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for cls in _filesystem_option_classes():
        cls._add_argparse_args(parser)
    _, rest = parser.parse_known_args(args)
    out, rest_left = [], list(rest)
    for token in args:  # the recognised tokens, in their order
        if rest_left and token == rest_left[0]:
            rest_left.pop(0)
        else:
            out.append(token)
    return out


def set_filesystem_options(beam_args: Sequence[str] = ()) -> None:
    """THE place every command's storage settings come from: hand the Beam options
    (`--s3_endpoint_url`, `--s3_access_key_id`, `--project`, ...) to this process's FileSystems, so
    the launcher's own reads and writes (plans, skip-if-done checks, leases, summaries) reach the
    same buckets as the workers. Called by every pipeline command before its work
    (`pipeline.commands.options.BeamCommand`) and by the `run_*` library entry points."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(PipelineOptions(list(beam_args)))


def s3_client():
    """A boto3 S3 client built from the options `set_filesystem_options` set (Beam's own wrapper,
    so endpoint, keys and region are read exactly as Beam's S3 filesystem reads them)."""
    from apache_beam.io.aws.clients.s3.boto3_client import Client
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    return Client(FileSystems._pipeline_options or PipelineOptions([])).client


def split_bucket(path: str) -> tuple[str, str]:
    """"s3://bucket/a/b" -> ("bucket", "a/b")."""
    rest = path.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def check_destination(path: str, flag: str = "--output") -> None:
    """Fail in one line, before any work, when `path` cannot be written: a file where a folder is
    expected (local), or an object store bucket that does not exist or cannot be reached."""
    if not is_remote(path):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{flag} {path}: this is an existing file, not a folder; pass a folder path "
                             f"(it is created if missing)")
        return
    scheme = path.split("://", 1)[0]
    if scheme != "s3":
        return  # gs:// and others: the lease write (textok.lease) is the first write and fails first
    bucket, _ = split_bucket(path)
    try:
        s3_client().head_bucket(Bucket=bucket)
    except Exception as e:  # botocore ClientError / EndpointConnectionError / NoCredentialsError
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        why = {"404": "the bucket does not exist", "NoSuchBucket": "the bucket does not exist",
               "403": "access denied"}.get(str(code), f"{type(e).__name__}: {' '.join(str(e).split())}")
        raise ValueError(f"{flag} {path}: cannot write there ({why}); create bucket {bucket!r} or fix {flag} "
                         "(and --s3_endpoint_url / credentials)") from None


def list_with_mtime(folder: str, recursive: bool = True) -> list[tuple[str, float]]:
    """(path, modification time in Unix seconds) of every file under `folder` (none when missing)."""
    if not is_remote(folder):
        out = []
        for root, dirs, files in os.walk(folder):
            for n in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                p = os.path.join(root, n)
                try:
                    out.append((p, os.lstat(p).st_mtime))
                except FileNotFoundError:
                    pass
            if not recursive:
                break
        return sorted(out)
    from apache_beam.io.filesystems import FileSystems

    pattern = join(folder, "**" if recursive else "*")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # BeamIOError: nothing there yet
        return []
    return sorted((m.path, float(m.last_updated_in_seconds or 0.0)) for m in found)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.join(base, *parts)
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def dirname(path: str) -> str:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.split(path)[0]
    return os.path.dirname(os.path.abspath(path))


def exists(path: str) -> bool:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.exists(path)
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    """Local: a directory. Remote (no real directories): any object lies under `path/`."""
    if is_remote(path):
        return bool(_match(join(path, "**")))
    return os.path.isdir(path)


def _match(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def read_bytes(path: str) -> bytes:
    """A whole file's bytes, never transparently decompressed. An s3:// object is one GET (Beam's
    stream would send a HEAD for the size first: twice the round trips per image)."""
    if path.startswith("s3://"):
        return _s3_get(path)
    if is_remote(path):
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _s3_get(path: str) -> bytes:
    import botocore.exceptions
    from apache_beam.io.aws import s3io
    from apache_beam.io.aws.clients.s3 import boto3_client
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    bucket, key = s3io.parse_s3_path(path)
    # the client Beam's S3 filesystem would use, with the same options (--s3_endpoint_url, keys, ...)
    client = boto3_client.Client(FileSystems._pipeline_options or PipelineOptions()).client
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            raise FileNotFoundError(f"{path}: no such object") from e
        raise OSError(f"{path}: S3 GetObject failed ({code}: {e})") from e
    except botocore.exceptions.BotoCoreError as e:
        raise OSError(f"{path}: S3 GetObject failed ({type(e).__name__}: {e})") from e


def open_input(path: str):
    """Something pyarrow reads from: the local path, or a seekable Beam stream (Parquet readers
    fetch the footer and the row groups they need with ranged reads, not the whole object)."""
    if is_remote(path):
        from apache_beam.io.filesystems import CompressionTypes, FileSystems

        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return path


@contextlib.contextmanager
def open_output_atomic(path: str) -> Iterator[Any]:
    """A binary stream whose content appears at `path` all at once when the block ends without an
    error (see the module docstring for object stores); on an error nothing appears at `path`."""
    folder, name = dirname(path), basename(path)
    tmp = join(folder, f".{name}{INFLIGHT}{uuid.uuid4().hex}")
    if not is_remote(path):
        os.makedirs(folder, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                yield f
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    from apache_beam.io.filesystems import CompressionTypes, FileSystems

    try:
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield f
        FileSystems.rename([tmp], [path])
    finally:
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])


def write_bytes_atomic(data: bytes, path: str) -> str:
    with open_output_atomic(path) as f:
        f.write(data)
    return path


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path))


def write_json_atomic(obj: Any, path: str) -> str:
    return write_bytes_atomic((json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode(), path)


def makedirs(path: str) -> None:
    """Local folders only: object stores have no directories to create."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete([path])
    else:
        os.remove(path)


def remove_tree(path: str) -> None:
    if not is_remote(path):
        shutil.rmtree(path)
        return
    from apache_beam.io.filesystems import FileSystems

    found = _match(join(path, "**"))
    if found:
        FileSystems.delete(found)


def list_remote_parquet(path: str) -> list[str]:
    """`schemas.common.list_parquet` of a remote folder: Parquet files under it (recursive, sorted;
    hidden names, temp and in-flight files skipped), or [path] for a file."""
    if path.endswith(".parquet") and exists(path):
        return [path]
    root = path.rstrip("/") + "/"
    out = [p for p in _match(join(path, "**")) if p.endswith(".parquet")
           and not any(part.startswith(".") for part in p[len(root):].split("/"))]
    if not out and not is_dir(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    return out
