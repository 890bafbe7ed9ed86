"""How a case's outcome appears in the bench JSON: ``{"skipped": reason}``, or ``{"error": ..., "traceback": ...}``
for a case that raised (see ``Context.attempt``: the other cases still run)."""

from __future__ import annotations

import traceback

#: Last lines of a failed case's traceback kept in the JSON.
ERROR_TRACEBACK_LINES = 6


def failure(exc: BaseException) -> dict[str, str]:
    """A failed case as it appears in the JSON: the error and the last lines of its traceback."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": "".join(lines[-ERROR_TRACEBACK_LINES:])}


def skipped(reason: str) -> dict[str, str]:
    """A case that did not run, with the reason."""
    return {"skipped": reason}
