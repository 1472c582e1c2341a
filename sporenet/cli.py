"""The ``sporenet`` command line.

Each subcommand lives in its own module under ``sporenet/commands`` and exports
``command`` (or ``commands``, a tuple, for a module of several); they are found and registered here, so adding a command touches no
shared file.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from . import __version__, commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sporenet")
def cli() -> None:
    """sporenet: a peer-to-peer overlay network run by cooperating agents."""


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        for cmd in getattr(module, "commands", (getattr(module, "command", None),)):
            if isinstance(cmd, click.Command):
                cli.add_command(cmd)


_register_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
