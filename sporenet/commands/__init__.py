"""One module per CLI subcommand. Each module defines ``command``: a click command
or group; ``sporenet.cli`` registers every module found here."""
