"""``python -m cleanpipe``."""

from cleanpipe.cli import entry

entry()
