"""Truth tables of pod-to-pod reachability, as the upstream e2e ``netpol`` suite prints them.

A ``Matrix`` holds, for every (from, to, port, protocol), whether traffic got through (or is
expected to): ``True`` allowed, ``False`` denied, or unknown (a probe that was neither a real
reply nor a clean drop, kept with the reason). Pods are named ``namespace/name``; addresses
outside the cluster by their IP. ``diff`` compares an expected matrix with an observed one;
an unknown observation is always a mismatch, so no test passes on an inconclusive probe.

This module owns the data and its printing only: computing expectations is ``model``'s,
probing is ``prober``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

Case = tuple[int, str]  # (port, protocol), protocol "TCP" | "UDP" | "SCTP"
Key = tuple[str, str, int, str]  # (from, to, port, protocol)


@dataclasses.dataclass
class Matrix:
    """Rows are sources (``froms``), columns destinations (``tos``), one table per case."""

    froms: tuple[str, ...]
    tos: tuple[str, ...]
    cases: tuple[Case, ...]
    values: dict[Key, bool] = dataclasses.field(default_factory=dict)
    unknown: dict[Key, str] = dataclasses.field(default_factory=dict)
    notes: dict[Key, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, froms: Iterable[str], tos: Iterable[str], cases: Iterable[Case],
              value: Callable[[str, str, int, str], bool]) -> Matrix:
        """A complete matrix whose every cell is ``value(from, to, port, protocol)``."""
        made = cls(tuple(froms), tuple(tos), tuple(cases))
        for src, dst, port, protocol in made.cells():
            made.set(src, dst, port, protocol, value(src, dst, port, protocol))
        return made

    def cells(self) -> list[Key]:
        return [(src, dst, port, protocol) for port, protocol in self.cases
                for src in self.froms for dst in self.tos]

    def _check(self, key: Key) -> None:
        src, dst, port, protocol = key
        if src not in self.froms or dst not in self.tos or (port, protocol) not in self.cases:
            raise KeyError(f"{src} -> {dst} {protocol}/{port} is not in this matrix")

    def set(self, src: str, dst: str, port: int, protocol: str, value: bool | None, *,
            note: str = "") -> None:
        """Record a cell; ``None`` records it as unknown, ``note`` saying why. Raises
        ``KeyError`` for a cell outside the matrix."""
        key = (src, dst, port, protocol)
        self._check(key)
        self.values.pop(key, None)
        self.unknown.pop(key, None)
        if value is None:
            self.unknown[key] = note or "unknown"
        else:
            self.values[key] = value
        if note:
            self.notes[key] = note
        else:
            self.notes.pop(key, None)

    def get(self, src: str, dst: str, port: int, protocol: str) -> bool | None:
        """The cell's value, ``None`` if unknown. Raises ``KeyError`` if never set."""
        key = (src, dst, port, protocol)
        self._check(key)
        if key in self.unknown:
            return None
        return self.values[key]

    def is_complete(self) -> bool:
        return all(k in self.values or k in self.unknown for k in self.cells())

    def count(self, value: bool | None) -> int:
        if value is None:
            return len(self.unknown)
        return sum(1 for v in self.values.values() if v is value)

    def render(self, *, against: Matrix | None = None) -> str:
        """The tables, one per case: ``.`` allowed, ``X`` denied, ``?`` unknown or unset;
        with ``against`` (the expected matrix) every cell differing from it is marked ``*``."""
        width = max(len(k) for k in ("-", *self.froms, *self.tos)) + 2
        blocks = []
        for port, protocol in self.cases:
            lines = [f"{protocol}/{port}:",
                     "".join(k.ljust(width) for k in ("-", *self.tos)).rstrip()]
            for src in self.froms:
                cells = [src.ljust(width)]
                for dst in self.tos:
                    key = (src, dst, port, protocol)
                    mark = ("?" if key in self.unknown or key not in self.values
                            else "." if self.values[key] else "X")
                    if against is not None and _differs(against, self, key):
                        mark += "*"
                    cells.append(mark.ljust(width))
                lines.append("".join(cells).rstrip())
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def __str__(self) -> str:
        return self.render()


def _differs(expected: Matrix, observed: Matrix, key: Key) -> bool:
    if key in observed.unknown or key not in observed.values:
        return True
    return expected.values.get(key) is not observed.values[key]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    src: str
    dst: str
    port: int
    protocol: str
    expected: bool
    observed: bool | None  # None: the probe was inconclusive
    note: str = ""

    def __str__(self) -> str:
        seen = {True: "allowed", False: "denied", None: "unknown"}[self.observed]
        want = "allowed" if self.expected else "denied"
        note = f" ({self.note})" if self.note else ""
        return (f"{self.src} -> {self.dst} {self.protocol}/{self.port}: expected {want}, "
                f"observed {seen}{note}")


@dataclasses.dataclass(frozen=True)
class Diff:
    """What differs between an expected and an observed matrix; false when nothing does."""

    expected: Matrix
    observed: Matrix
    mismatches: tuple[Mismatch, ...]

    def __bool__(self) -> bool:
        return bool(self.mismatches)

    def render(self) -> str:
        """Both matrices, the observed one with its mismatches marked, and one line each."""
        if not self.mismatches:
            return "no mismatches"
        return "\n\n".join([
            f"{len(self.mismatches)} mismatches",
            "expected:\n" + self.expected.render(),
            "observed (* differs from expected):\n" + self.observed.render(
                against=self.expected),
            "\n".join(str(m) for m in self.mismatches)])

    def __str__(self) -> str:
        return self.render()


def diff(expected: Matrix, observed: Matrix) -> Diff:
    """The cells where ``observed`` is not ``expected`` (unknown observations included).
    Raises ``ValueError`` if the two have different rows, columns or cases, or if
    ``expected`` is not complete and certain."""
    if (expected.froms, expected.tos, expected.cases) != (
            observed.froms, observed.tos, observed.cases):
        raise ValueError("matrices of different shapes: "
                         f"{expected.froms} x {expected.tos} x {expected.cases} against "
                         f"{observed.froms} x {observed.tos} x {observed.cases}")
    if expected.unknown or not expected.is_complete():
        raise ValueError("the expected matrix has unknown or unset cells")
    found = []
    for key in expected.cells():
        if _differs(expected, observed, key):
            note = observed.unknown.get(key) or observed.notes.get(key, "")
            found.append(Mismatch(*key, expected=expected.values[key],
                                  observed=observed.values.get(key), note=note))
    return Diff(expected, observed, tuple(found))
