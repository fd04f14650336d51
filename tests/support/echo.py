"""Who-answers peers for Service tests, run inside network namespaces
(``python -m tests.support.echo``).

``serve NAME TCP_PORTS UDP_PORTS``: (comma-separated lists, may be empty) print ``ready``, then
answer every TCP connection and every UDP datagram with ``NAME <client address>`` until
killed. ``ask HOST PORT COUNT TIMEOUT tcp|udp``: COUNT times, a new connection (or datagram
from a new socket) to HOST:PORT; print one line per try, the answer or ``fail <reason>``.
The servers and clients end on their own: servers after 600 s, clients after COUNT tries.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
import time

LIFETIME = 600.0


def serve(name: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    servers: list[socketserver.BaseServer] = []

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(f"{name} {self.client_address[0]}\n".encode())

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _, sock = self.request
            sock.sendto(f"{name} {self.client_address[0]}\n".encode(), self.client_address)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    for port in tcp_ports:
        servers.append(socketserver.ThreadingTCPServer(("0.0.0.0", port), Tcp))
    for port in udp_ports:
        servers.append(socketserver.ThreadingUDPServer(("0.0.0.0", port), Udp))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    time.sleep(LIFETIME)


def ask(host: str, port: int, count: int, timeout: float, protocol: str) -> None:
    for _ in range(count):
        try:
            if protocol == "udp":
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(timeout)
                    sock.sendto(b"who\n", (host, port))
                    answer = sock.recv(256).decode().strip()
            else:
                with socket.create_connection((host, port), timeout=timeout) as sock:
                    answer = sock.makefile().readline().strip()
            print(answer or "fail empty", flush=True)
        except OSError as e:
            print(f"fail {type(e).__name__}", flush=True)


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], _ports(sys.argv[3]), _ports(sys.argv[4]))
    else:
        ask(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
