"""A real S3 HTTP endpoint on loopback for the tests: moto_server as a subprocess.

The server checks signatures and IAM policies (``INITIAL_NO_AUTH_ACTION_COUNT``: the
setup's own requests run unauthenticated, every later one is authenticated), so wrong
credentials and missing permissions are answered as AWS answers them.  It keeps
everything in memory and is stopped at the end of the session.

`ThrottlingProxy` sits in front of it and answers ``503 SlowDown`` to the requests
whose path contains a marker, to see retries and the error after them; its `outage`
takes the endpoint away (connections refused) for a few seconds.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3

REGION = "us-east-1"
# requests the setup makes before authentication starts (see `start_s3_server`)
SETUP_ACTIONS = 6


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    writer: dict[str, str]  # access key of a user allowed s3:*
    nobody: dict[str, str]  # access key of a user with no permission at all
    bucket: str

    def env(self, credentials: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a process needs to reach the bucket with ``credentials``."""
        credentials = credentials or self.writer
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.writer["AccessKeyId"], aws_secret_access_key=self.writer["SecretAccessKey"])  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_s3_server(log: Path) -> S3Server:
    """Start ``moto_server -H 127.0.0.1 -p PORT``, create two users and a bucket."""
    executable = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    assert executable, "moto_server not found: install the dev extras (moto[server])"
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    admin = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **admin)
    # exactly SETUP_ACTIONS requests: authentication starts after them
    iam.create_user(UserName="writer")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="writer", PolicyName="s3-all", PolicyDocument=json.dumps(policy))
    writer = iam.create_access_key(UserName="writer")["AccessKey"]
    iam.create_user(UserName="nobody")
    nobody = iam.create_access_key(UserName="nobody")["AccessKey"]
    boto3.client("s3", **admin).create_bucket(Bucket="scalereg-test")
    return S3Server(endpoint, process, {k: writer[k] for k in ("AccessKeyId", "SecretAccessKey")},
                    {k: nobody[k] for k in ("AccessKeyId", "SecretAccessKey")}, "scalereg-test")  # fmt: skip


def stop_s3_server(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


class ThrottlingProxy:
    """Forwards HTTP to ``upstream``; answers 503 SlowDown to requests (of ``methods``,
    default any) for paths containing ``marker`` (the first ``times`` such requests, or
    all of them when ``times`` is None)."""

    def __init__(self, upstream: str, marker: str | None = None, times: int | None = None, methods: tuple[str, ...] | None = None) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self.methods = methods
        self.marker, self.times, self.throttled = marker, times, 0
        self.down = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1: answers "Expect: 100-continue" (botocore sends it with PUTs; an
            # HTTP/1.0 handler leaves the client waiting) and keeps connections alive
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                if proxy.down:  # a kept-alive connection during an outage: dropped
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if (
                    proxy.marker and proxy.marker in self.path and (proxy.methods is None or self.command in proxy.methods)
                    and (proxy.times is None or proxy.throttled < proxy.times)
                ):  # fmt: skip
                    proxy.throttled += 1
                    payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # a HEAD's answer has no body but the object's length
                self.send_header("Content-Length", response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.outages = 0

    def _serve(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def outage(self, seconds: float) -> None:
        """The endpoint goes away (connections refused) for ``seconds``, then comes back
        on the same port."""
        self.down = True
        self.server.shutdown()
        self.server.server_close()
        self.outages += 1
        time.sleep(seconds)
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.down = False
        self._serve()

    def __enter__(self) -> "ThrottlingProxy":
        self._serve()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
