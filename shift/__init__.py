"""shift: a search engine for transfer learning — which B models should I fine-tune?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from shift.client import Client


def connect(home: Any = None, **options: Any) -> Client:
    """Open a shift home and return a :class:`~shift.client.Client`."""
    from shift.client import connect as _connect

    return _connect(home, **options)


def __getattr__(name: str) -> Any:
    """``shift.Client``, imported on first use so that ``import shift`` stays light."""
    if name == "Client":
        from shift.client import Client

        return Client
    raise AttributeError(f"module 'shift' has no attribute {name!r}")


__all__ = ["Client", "connect", "__version__"]
