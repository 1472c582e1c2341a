"""The steps of ``sporenet demo`` and ``sporenet demo --tun``: each timed, a summary table."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sporenet.api_client import ApiClientError
from sporenet.local_mesh import MeshError


class DemoFailed(Exception):
    """A step did not reach its expected state; the message says which and why."""


class Steps:
    """Runs the demo's steps, timing each; the rows become the summary table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: list[tuple[str, str, float, bool]] = []

    def run(self, title: str, fn: Callable[[], str]) -> None:
        self.console.print(f"\n[bold]{len(self.rows) + 1}. {title}[/bold]")
        t0 = time.monotonic()
        try:
            detail = fn()
        except (MeshError, ApiClientError, DemoFailed) as e:
            self.rows.append((title, str(e).splitlines()[0], time.monotonic() - t0, False))
            raise DemoFailed(f"step {len(self.rows)} ({title}): {e}") from None
        self.rows.append((title, detail, time.monotonic() - t0, True))

    def table(self) -> Table:
        table = Table(title="sporenet demo: summary", title_justify="left")
        for col, just in (("#", "right"), ("step", "left"), ("result", "left"),
                          ("time", "right"), ("", "left")):
            table.add_column(col, justify=just)
        for i, (title, detail, secs, ok) in enumerate(self.rows, 1):
            table.add_row(str(i), title, escape(detail), f"{secs:.2f} s",
                          "[green]PASS[/green]" if ok else "[red]FAIL[/red]")
        return table
