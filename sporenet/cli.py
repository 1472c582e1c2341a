"""The ``sporenet`` command line.

Each subcommand lives in its own module under ``sporenet/commands`` and exports
``command`` (or ``commands``, a tuple, for a module of several); they are found and
registered here (a module named like its command is loaded alone, on first use), so
adding a command touches no shared file.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from . import __version__, commands


def _lean_logging() -> None:
    """``sporenet up`` runs for days: structlog's pretty tracebacks would load rich and
    pygments (~4 MB resident; bench/README.md "Where the RSS goes") for nothing a node
    logs. Import structlog with rich out of its sight (it falls back to plain
    tracebacks), then let rich be imported normally again: a user's agent may use it."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" fails for now
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


class _Commands(click.Group):
    """Loads a command's module when the command is asked for, and every module only
    for a listing (``--help``): ``sporenet up``, which runs for days, then holds only
    what the node needs, not every command's imports (rich, the simulator, ...)."""

    _all_loaded = False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "up":
            _lean_logging()
        if name not in self.commands:
            self._load(name.replace("-", "_"))
        if name not in self.commands:
            self._load_all()
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_all()
        return super().list_commands(ctx)

    def _load(self, module_name: str) -> None:
        full = f"{commands.__name__}.{module_name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as exc:
            if exc.name != full:
                raise  # the module exists and lacks a dependency: say so
            return
        for cmd in getattr(module, "commands", (getattr(module, "command", None),)):
            if isinstance(cmd, click.Command):
                self.add_command(cmd)

    def _load_all(self) -> None:
        if not self._all_loaded:
            self._all_loaded = True
            for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
                self._load(info.name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sporenet")
def cli() -> None:
    """sporenet: a peer-to-peer overlay network run by cooperating agents."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
