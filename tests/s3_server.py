"""A local S3-compatible server (moto in server mode) on 127.0.0.1 for object-store tests.

    with local_s3("bkt") as s3:
        run_encode("s3://bkt/cap", "s3://bkt/data", ..., beam_args=s3.beam_args)

Beam reaches it through its own S3 filesystem (`--s3_endpoint_url` and key options); pyarrow.fs
and boto3 through the standard AWS environment variables, set for the block's duration.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class LocalS3:
    url: str
    bucket: str
    beam_args: list[str] = field(default_factory=list)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def upload_tree(self, local_dir: str, prefix: str) -> str:
        """Copy a local folder to s3://bucket/prefix; returns that URI."""
        client = self.client()
        for root, _, files in os.walk(local_dir):
            for f in files:
                path = os.path.join(root, f)
                client.upload_file(path, self.bucket, f"{prefix}/{os.path.relpath(path, local_dir)}")
        return f"s3://{self.bucket}/{prefix}"


@contextlib.contextmanager
def local_s3(bucket: str = "textok-test", own_process: bool = False) -> Iterator[LocalS3]:
    """`own_process`: run moto as a separate process (`moto_server`), so the server's Python does
    not share the client's GIL -- what a timing against a real S3 endpoint needs (the benches)."""
    if own_process:
        server = _MotoProcess()
    else:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in (*ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(ENV, AWS_ENDPOINT_URL=url)
    try:
        s3 = LocalS3(url, bucket, ["--s3_endpoint_url", url, "--s3_access_key_id", ENV["AWS_ACCESS_KEY_ID"],
                                   "--s3_secret_access_key", ENV["AWS_SECRET_ACCESS_KEY"],
                                   "--s3_region_name", ENV["AWS_DEFAULT_REGION"]])
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


class _MotoProcess:
    """moto's S3 server as a child process on a free loopback port (ThreadedMotoServer's interface)."""

    def start(self) -> None:
        import socket
        import subprocess
        import sys
        import time

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto_server did not accept connections within 60 s")

    def get_host_and_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
