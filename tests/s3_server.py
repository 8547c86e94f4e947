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
def local_s3(bucket: str = "textok-test") -> Iterator[LocalS3]:
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
