"""Errors the CLI reports to users."""


class CliError(Exception):
    """A user-facing error: the message says what was wrong, where, and what to do."""
