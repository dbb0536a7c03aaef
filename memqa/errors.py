"""The one error type a user sees: a failure printed as one line that names the fix."""
from __future__ import annotations

import click


class MemqaError(click.ClickException):
    """A user-facing failure: printed as one line naming the fix, exit code 1."""
