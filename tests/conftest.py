"""Test-wide setup: quiet structlog (warnings and errors only) so failures stand out."""

from sporenet.logs import configure_logging

configure_logging("warning", "console")
