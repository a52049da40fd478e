"""A real S3-compatible HTTP server (moto) on loopback, in its own process, with one bucket."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import listening_process

# The child prints its port once listening, then serves until its stdin closes (so it never
# outlives the test run, even if the parent is killed).
_SERVER = """
import logging
import sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the test's stderr
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("LISTENING", server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass(frozen=True)
class S3Endpoint:
    endpoint_url: str
    key: str
    secret: str = field(repr=False)
    bucket: str
    region: str = "us-east-1"

    def connection(self) -> dict[str, Any]:
        """The ``infinisynth_s3`` connection as Airflow would hand it to the library."""
        return {"login": self.key, "password": self.secret, "extra": {"endpoint_url": self.endpoint_url}}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )


@contextmanager
def moto_s3(bucket: str = "infinisynth-test") -> Iterator[S3Endpoint]:
    with listening_process([sys.executable, "-c", _SERVER], "moto server", stdin=subprocess.PIPE) as (process, port):
        try:
            endpoint = S3Endpoint(
                endpoint_url=f"http://127.0.0.1:{port}",
                key="AKIATESTKEY0000",
                secret=f"test-secret-{uuid.uuid4().hex}",
                bucket=bucket,
            )
            endpoint.client().create_bucket(Bucket=bucket)
            yield endpoint
        finally:
            if process.stdin:
                process.stdin.close()  # the server's own way out
