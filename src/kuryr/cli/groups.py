"""The click group class every kuryr command group uses: kuryr's own errors are printed as one
line (``Error: ...``) on stderr with exit code 1, without a traceback (a traceback is a bug)."""

from __future__ import annotations

import sys
from typing import Any

import click

from kuryr import errors


class KuryrGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.KuryrError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            sys.exit(1)
