"""palign: align an open LLM with one person's personality, and measure it honestly."""

from __future__ import annotations

__version__ = "0.1.0"

from palign.errors import PalignError

__all__ = ["PalignError", "__version__"]
