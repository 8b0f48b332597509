"""Errors that palign reports to users as one line (the CLI exits with code 2)."""

from __future__ import annotations


class PalignError(Exception):
    """A user-facing error: bad input, missing file, unsupported model.

    The message must name the problem and the fix in one line. The CLI prints
    ``palign: error: <message>`` and exits with code 2, without a traceback.
    """
