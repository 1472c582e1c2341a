"""The ``sporenet`` command line. Each subcommand lives in its own module under
``sporenet/commands`` and is registered here."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sporenet")
def cli() -> None:
    """sporenet: a peer-to-peer overlay network run by cooperating agents."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
