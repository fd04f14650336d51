"""A tiny TCP peer run inside network namespaces by the tests (``python -m tests.support.tcp``).

``serve HOST PORT``: print ``ready``, accept one connection, read until EOF, send back as many
bytes as were read, print the count. ``send HOST PORT NBYTES TIMEOUT``: connect, send NBYTES,
half-close, read the reply until EOF, print ``sent=<n> received=<m>``; exit 3 if it cannot
connect within TIMEOUT seconds.
"""

from __future__ import annotations

import socket
import sys


def serve(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
        print("ready", flush=True)
        listener.settimeout(30)
        conn, _ = listener.accept()
        with conn:
            total = 0
            while chunk := conn.recv(65536):
                total += len(chunk)
            conn.sendall(b"y" * total)
        print(total, flush=True)


def send(host: str, port: int, nbytes: int, timeout: float) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect((host, port))
        except OSError as e:
            print(f"connect failed: {e}", flush=True)
            return 3
        conn.sendall(b"x" * nbytes)
        conn.shutdown(socket.SHUT_WR)
        received = 0
        while chunk := conn.recv(65536):
            received += len(chunk)
        print(f"sent={nbytes} received={received}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
