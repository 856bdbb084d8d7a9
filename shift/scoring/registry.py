"""Deprecated name of :mod:`shift.scoring.plugins` (the proxy plug-in registry), kept for plug-ins
written against it; "registry" in shift means the SQLite store. Import from ``plugins`` instead."""

from shift.scoring.plugins import *  # noqa: F403  (deprecated: use shift.scoring.plugins)
from shift.scoring.plugins import __all__  # noqa: F401
