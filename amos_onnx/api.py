"""The public API in one place, so the CLI and users call the same functions."""

from __future__ import annotations

from .fit import fit_site
from .fitter import fit
from .pipeline import convert, inspect
from .runtime import session
from .validate import validate

__all__ = ["convert", "inspect", "validate", "fit", "fit_site", "session"]
