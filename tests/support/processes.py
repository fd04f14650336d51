"""Ending processes the tests started, by their own Popen handle (never by name)."""

from __future__ import annotations

import signal
import subprocess


def stop(process: subprocess.Popen[bytes] | None, *, sig: int = signal.SIGTERM,
         timeout: float = 30) -> None:
    """Send ``sig`` to a process still running, wait up to ``timeout`` s, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
