#!/usr/bin/env python3
"""Holds idle mutual-TLS connections open, for bench/run.sh --mtls.

  tls_hold.py --port P --cert C --key K --ca CA [--count N]

Opens N TLS 1.3 connections to 127.0.0.1:P with the client certificate C/K, sends one
HTTP/1.1 keep-alive request on each and reads its answer (so every connection has been
through a handshake and a request, as a pooled mesh connection has), prints
`held N` on stdout, then keeps them all open until it is killed. The server's
certificate is checked against CA; its name is not (a workload certificate names a
SPIFFE ID, not a host). Standard library only.
"""

import argparse
import resource
import signal
import socket
import ssl
import sys


def read_answer(conn):
    """Reads one HTTP/1.1 answer with a Content-Length body; returns its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer's head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the answer's body")
        body += chunk
    return head.split(b"\r\n", 1)[0].decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.count + 64)), hard))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["http/1.1"])

    held = []
    try:
        for _ in range(args.count):
            raw = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            conn = ctx.wrap_socket(raw)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n")
            status = read_answer(conn)
            if " 200 " not in status + " ":
                raise ConnectionError(f"answer {status!r}")
            held.append(conn)
    except (OSError, ConnectionError, ssl.SSLError) as e:
        print(f"failed after {len(held)} connections: {e}", flush=True)
        sys.exit(1)

    print(f"held {len(held)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()


if __name__ == "__main__":
    main()
