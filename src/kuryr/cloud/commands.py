"""Running one step of the local cloud as a command: its output appended to a log file, and a
failure turned into a ``CloudError`` that names the step, the log and the log's last lines.

Owns ``run`` (blocking commands: ovsdb-tool, ovs-vsctl, mariadb, pip, apt-get,
neutron-db-manage) and the error format. Long-lived daemons are ``services``' business.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import subprocess
import time
from collections.abc import Mapping, Sequence

from kuryr.cloud import CloudError

TAIL_LINES = 10
# kuryr's own Python settings must not leak into Neutron's virtualenv or pip.
_PRIVATE_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
                      "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV", "PIP_TARGET", "PIP_PREFIX")


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """This process' environment without its Python settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_VARIABLES}
    env.update(extra)
    return env


def tail(log: pathlib.Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it cannot be read)."""
    try:
        with log.open(encoding="utf-8", errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines)).rstrip("\n")
    except OSError:
        return ""


def failure(step: str, reason: str, log: pathlib.Path | None) -> CloudError:
    """A CloudError for ``step``: the reason, the log to read and its last lines."""
    message = f"{step} failed: {reason}"
    if log is not None:
        message += f"\nSee {log}"
        last = tail(log)
        if last:
            indented = "\n".join("    " + line for line in last.splitlines())
            message += f"; its last lines:\n{indented}"
    return CloudError(message)


def header(log: pathlib.Path, argv: Sequence[str]) -> None:
    """Append a line saying what runs now, so a log read later tells its runs apart."""
    log.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with log.open("a", encoding="utf-8") as f:
        f.write(f"==== {stamp} kuryr runs: {' '.join(argv)}\n")


def run(argv: Sequence[str], *, step: str, log: pathlib.Path,
        env: Mapping[str, str] | None = None, stdin: str | None = None,
        timeout: float = 120.0, drop: re.Pattern[str] | None = None) -> str:
    """Run ``argv`` to completion, append its output to ``log`` and return that output.

    ``env`` is added to this process' environment; output lines matching ``drop`` (harmless
    noise) are left out of the log and the result. Raises CloudError naming ``step`` when the
    command is missing, times out or exits non-zero.
    """
    header(log, argv)
    full_env = child_environment(env or {})
    try:
        if stdin is None:
            completed = subprocess.run(
                list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, env=full_env, timeout=timeout, check=False)
        else:
            completed = subprocess.run(
                list(argv), input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, env=full_env, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise failure(step, f"command {argv[0]} not found", None) from e
    except subprocess.TimeoutExpired as e:
        _append(log, _keep(_text(e.output), drop))
        raise failure(step, f"{argv[0]} did not finish within {timeout:.0f} s", log) from e
    output = _keep(completed.stdout, drop)
    _append(log, output)
    if completed.returncode != 0:
        raise failure(step, f"{argv[0]} exited with code {completed.returncode}", log)
    return output


def _keep(text: str, drop: re.Pattern[str] | None) -> str:
    if drop is None or not text:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if not drop.search(line))


def _append(log: pathlib.Path, text: str) -> None:
    if text:
        with log.open("a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")


def _text(output: bytes | str | None) -> str:
    if output is None:
        return ""
    return output.decode(errors="replace") if isinstance(output, bytes) else output
