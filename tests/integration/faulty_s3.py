"""A faulty S3 store for the storage-layer sweep: an HTTP proxy on loopback in front of a real S3 API server
(moto) that misbehaves the way some stores do, by rule: answers 503 for a while, refuses writes, keeps
uploads with aws-chunked framing, or has another writer replace an object just before it is read.

The client side stays real: boto3 and pyarrow talk HTTP to it as to any endpoint.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ERROR = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>%s</Message></Error>'


class FaultyS3:
    """The proxy. Set its rules between requests; each applies to the requests that match it.

    Attributes:
        fail_next: statuses to answer (503, 500, ...) to the next requests, one each, before forwarding again.
        deny_writes: answer 403 AccessDenied to every PUT, POST and DELETE.
        frame_puts_to: a key suffix; PUT bodies of matching keys are stored wrapped in aws-chunked framing.
        replace_before_get: ``{key suffix: new bytes}``; the first GET of a matching key first overwrites it.
        requests: ``(method, path)`` of every request seen.
    """

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream).netloc
        self.fail_next: list[int] = []
        self.deny_writes = False
        self.frame_puts_to: str | None = None
        self.replace_before_get: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def answer(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        key = urlsplit(path).path
        with self._lock:
            self.requests.append((method, path))
            status = self.fail_next.pop(0) if self.fail_next else None
            replace = next((v for k, v in self.replace_before_get.items() if method == "GET" and key.endswith(k)), None)
            if replace is not None:
                self.replace_before_get = {k: v for k, v in self.replace_before_get.items() if not key.endswith(k)}
        if status is not None:
            code = b"SlowDown" if status == 503 else b"InternalError"
            return status, [], _ERROR % (code, b"injected by the test store")
        if self.deny_writes and method in ("PUT", "POST", "DELETE"):
            return 403, [], _ERROR % (b"AccessDenied", b"Access Denied")
        if replace is not None:  # another writer, with a client of its own, straight to the real store
            import boto3

            bucket, _, name = key.lstrip("/").partition("/")
            boto3.client("s3", endpoint_url=f"http://{self.upstream}").put_object(Bucket=bucket, Key=name, Body=replace)
        if method == "PUT" and self.frame_puts_to and key.endswith(self.frame_puts_to):
            body = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n" % (len(body), body)
            headers = {**headers, "Content-Length": str(len(body))}
        return self.forward(method, path, headers, body)


def _handler(store: FaultyS3):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "expect", "connection")}
            status, out_headers, out = store.answer(self.command, self.path, headers, body)
            self.send_response(status)
            for k, v in out_headers:
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(k, v)
            upstream_length = dict((k.lower(), v) for k, v in out_headers).get("content-length", "0")
            self.send_header("Content-Length", upstream_length if self.command == "HEAD" else str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler
