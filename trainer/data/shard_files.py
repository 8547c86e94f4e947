"""Where the trainer's shard files live: local paths, or object stores streamed through `pyarrow.fs`.

    files = list_shard_files("s3://bucket/run/shards")        # or gs://..., or a local folder
    pf = open_parquet(files[0])                                # pq.ParquetFile, ranged reads

Remote shards are never copied to local disk: a `ParquetFile` over `pyarrow.fs` fetches the
footer, then only the column chunks of the row group being read (the loader reads one row
group at a time). Credentials and endpoint come from the standard environment, as for any AWS
tool: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_REGION`, and `AWS_ENDPOINT_URL_S3`
or `AWS_ENDPOINT_URL` for an S3-compatible store (MinIO, a local test server); GCS uses
application-default credentials. Each process (each DataLoader worker) opens its own
filesystem object: they are not shared across a fork.
"""
from __future__ import annotations

import fnmatch
import os
from urllib.parse import urlparse

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from textok.schemas.common import meta_from_schema

_FILESYSTEMS: dict[tuple[int, str], pafs.FileSystem] = {}


def is_remote(path: str) -> bool:
    return "://" in str(path)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a URI; one filesystem per (process, scheme://bucket)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "gs", "gcs"):
        raise ValueError(f"{uri}: the trainer reads local, s3:// or gs:// shards (scheme {parsed.scheme!r})")
    key = (os.getpid(), f"{parsed.scheme}://{parsed.netloc}")
    if key not in _FILESYSTEMS:
        if parsed.scheme == "s3":
            kwargs = {}
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                kwargs["region"] = region
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:  # passed explicitly: not every Arrow release reads these variables itself
                ep = urlparse(endpoint)
                kwargs.update(endpoint_override=ep.netloc or ep.path, scheme=ep.scheme or "https")
            _FILESYSTEMS[key] = pafs.S3FileSystem(**kwargs)
        else:
            _FILESYSTEMS[key] = pafs.GcsFileSystem()
    return _FILESYSTEMS[key], parsed.netloc + parsed.path


def list_shard_files(spec: str) -> list[str]:
    """Sorted `.parquet` URIs under a remote folder (recursive; hidden/in-flight names skipped), a
    glob of them (`s3://b/shards/train-*.parquet`), or the one file named."""
    parsed = urlparse(spec)
    prefix = f"{parsed.scheme}://"
    pattern = any(c in spec for c in "*?[")
    root = spec[:min(spec.index(c) for c in "*?[" if c in spec)].rsplit("/", 1)[0] if pattern else spec
    fs, path = _filesystem(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [spec]
    if info.type == pafs.FileType.NotFound and not pattern:
        raise FileNotFoundError(f"{spec}: no such shard file or folder")
    found = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
    base = path.rstrip("/") + "/"
    uris = [prefix + f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet")
            and not any(p.startswith(".") for p in f.path[len(base):].split("/"))]
    if pattern:
        uris = [u for u in uris if fnmatch.fnmatch(u, spec)]
    return sorted(uris)


def open_parquet(path: str) -> pq.ParquetFile:
    if not is_remote(path):
        return pq.ParquetFile(path)
    fs, inner = _filesystem(path)
    return pq.ParquetFile(fs.open_input_file(inner))


def shard_meta(path: str) -> dict:
    """`schemas.common.read_meta` of a local or remote shard."""
    return meta_from_schema(open_parquet(path).schema_arrow, path)
