"""The one long-lived process per pod network namespace of the NetworkPolicy prober
(``ip netns exec NS python -m tests.support.netpol.agent NAME TCP_PORTS UDP_PORTS``, port
lists comma-separated, possibly empty). Standard library only, one asyncio loop.

Serving: on every TCP port, a connection that sends a line ``NONCE`` gets ``NAME NONCE`` back;
on every UDP port, a datagram ``NONCE`` gets the datagram ``NAME NONCE`` back; on IPv4 and,
where the namespace has it, IPv6.

Probing: each stdin line is a JSON command ``{"id", "host", "port", "protocol": "tcp"|"udp",
"timeout", "nonce"}``; each runs at once, concurrently with the others, and its result is one
JSON line on stdout: ``{"id", "outcome", "answer", "elapsed"}``, outcome one of

- ``answered``: a reply came (``answer`` is what it said; the prober checks it names the
  destination and echoes the nonce);
- ``timeout``: nothing came back in time (TCP: no handshake; UDP: no reply datagram);
- ``refused``: a TCP reset or an ICMP port unreachable;
- ``unreachable``: an ICMP host/network unreachable or no route;
- ``no-reply``: (TCP) the handshake completed but no answer came in time, or the peer closed
  without one: the path is open but the server did not answer, so this is no drop;
- ``error``: anything else (``answer`` says what).

The agent prints ``{"ready": true}`` once every server is bound and has answered the agent
itself over loopback (else ``{"ready": false, "error"}`` and exits 1), and ends when stdin
closes (its prober is gone) or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import socket
import sys
import time
from typing import Any, cast

LIFETIME = 3600.0
UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH}


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        nonce = data.decode(errors="replace").strip()
        if self.transport is not None:
            self.transport.sendto(f"{self.name} {nonce}\n".encode(), addr)


async def _serve(name: str, tcp_ports: list[int], udp_ports: list[int]) -> list[Any]:
    loop = asyncio.get_running_loop()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=10)
            writer.write(f"{name} {line.decode(errors='replace').strip()}\n".encode())
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    servers: list[Any] = []
    families = [socket.AF_INET]
    if socket.has_ipv6 and _ipv6_usable():
        families.append(socket.AF_INET6)
    for family in families:
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
        for port in tcp_ports:
            # asyncio sets IPV6_V6ONLY on the AF_INET6 listener: both families can bind.
            servers.append(await asyncio.start_server(answer, host, port, family=family,
                                                      reuse_address=True))
        for port in udp_ports:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(name),
                                                               sock=sock)
            servers.append(transport)
    return servers


def _ipv6_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::", 0))
        return True
    except OSError:
        return False


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


def _failure(e: BaseException) -> tuple[str, str]:
    if isinstance(e, TimeoutError):
        return "timeout", ""
    if isinstance(e, ConnectionRefusedError):
        return "refused", ""
    if isinstance(e, OSError) and e.errno in UNREACHABLE:
        return "unreachable", errno.errorcode.get(e.errno or 0, "")
    return "error", f"{type(e).__name__}: {e}"


async def _probe_tcp(host: str, port: int, timeout: float, nonce: str) -> tuple[str, str]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                timeout=timeout)
    except (OSError, TimeoutError) as e:
        return _failure(e)
    try:
        writer.write(f"{nonce}\n".encode())
        line = await asyncio.wait_for(reader.readline(), timeout=timeout)
        if not line:
            return "no-reply", "closed without answering"
        return "answered", line.decode(errors="replace").strip()
    except TimeoutError:
        return "no-reply", "connected, no answer in time"
    except OSError as e:
        return "no-reply", f"connected, then {type(e).__name__}"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _probe_udp(host: str, port: int, timeout: float, nonce: str) -> tuple[str, str]:
    loop = asyncio.get_running_loop()
    transport = None
    try:
        # A connected socket: only the destination's replies count, and an ICMP port
        # unreachable comes back as ECONNREFUSED.
        transport, client = await loop.create_datagram_endpoint(_UdpClient,
                                                                remote_addr=(host, port))
        transport.sendto(f"{nonce}\n".encode())
        data = await asyncio.wait_for(client.reply, timeout=timeout)
        return "answered", data.decode(errors="replace").strip()
    except (OSError, TimeoutError) as e:
        return _failure(e)
    finally:
        if transport is not None:
            transport.close()


async def _probe(command: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        probing = _probe_udp if command["protocol"] == "udp" else _probe_tcp
        outcome, answer = await probing(command["host"], int(command["port"]),
                                        float(command["timeout"]), str(command["nonce"]))
    except Exception as e:  # a malformed command must not end the agent
        outcome, answer = "error", f"{type(e).__name__}: {e}"
    _emit({"id": command.get("id"), "outcome": outcome, "answer": answer,
           "elapsed": round(time.monotonic() - started, 4)})


async def _commands(lifetime: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: set[asyncio.Task[None]] = set()
    deadline = loop.time() + lifetime
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=deadline - loop.time())
        except TimeoutError:
            return
        if not line:
            return  # stdin closed: the prober is gone
        if not line.strip():
            continue
        try:
            command = json.loads(line)
        except ValueError as e:
            _emit({"id": None, "outcome": "error", "answer": f"bad command: {e}"})
            continue
        task = asyncio.create_task(_probe(command))
        running.add(task)
        task.add_done_callback(running.discard)


async def _self_check(name: str, tcp_ports: list[int], udp_ports: list[int]) -> list[str]:
    """Every server answering over loopback, or what did not: a broken server must not
    pass for a dropped probe later."""
    checks = [("tcp", p, _probe_tcp("127.0.0.1", p, 2.0, "self")) for p in tcp_ports]
    checks += [("udp", p, _probe_udp("127.0.0.1", p, 2.0, "self")) for p in udp_ports]
    results = await asyncio.gather(*(c for _, _, c in checks))
    return [f"{protocol}/{port}: {outcome} {answer}".strip()
            for (protocol, port, _), (outcome, answer) in zip(checks, results, strict=True)
            if (outcome, answer) != ("answered", f"{name} self")]


async def main(name: str, tcp_ports: list[int], udp_ports: list[int], lifetime: float) -> int:
    try:
        servers = await _serve(name, tcp_ports, udp_ports)
    except OSError as e:
        _emit({"ready": False, "error": f"cannot serve: {e}"})
        return 1
    failed = await _self_check(name, tcp_ports, udp_ports)
    if failed:
        _emit({"ready": False, "error": "servers not answering over loopback: "
               + ", ".join(failed)})
        return 1
    _emit({"ready": True})
    try:
        await _commands(lifetime)
    finally:
        for server in servers:
            server.close()
    return 0


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.support.netpol.agent")
    parser.add_argument("name")
    parser.add_argument("tcp_ports", type=_ports)
    parser.add_argument("udp_ports", type=_ports)
    parser.add_argument("--lifetime", type=float, default=LIFETIME)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.name, args.tcp_ports, args.udp_ports, args.lifetime)))
