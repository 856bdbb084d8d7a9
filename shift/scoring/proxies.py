"""Proxy scores: cheap estimates of how well a model transfers to a task (higher is better).

Every proxy takes ``(train_x, train_y, val_x, val_y)`` frozen features and labels and returns a
score: a validation accuracy in ``[0, 1]`` for ``knn``/``knn_cosine``/``linear``; an unbounded
transferability estimate for the ``shift.scoring.estimators`` proxies (``logme``, ``leep``, ``nce``,
``hscore``, ``shrink_hscore``, ``transrate``, ``gbc``, ``parc``, ``sfda``, ``ncti``, ``lfc``,
``lgc``), which score the train split only and ignore the validation split. Proxies with
``needs_logits`` receive the model's source-classifier logits in place of the features. ``ncti``
is pool-relative: its ``many`` normalises over the models scored together.

Each proxy registers itself where it is defined (``shift.scoring.plugins``'s ``@proxy`` and
``@estimator``). ``PROXIES`` maps names to ``ProxySpec`` in registration order (knn, linear, then
the estimators in ``shift.scoring.estimators``' order); ``get_proxy`` looks one up. Importing this
module loads numpy only: the estimator modules are imported on the first lookup, torch and
hnswlib on use.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping

# knn and linear register themselves on import, before any estimator (PROXIES order)
from shift.scoring import knn as _knn  # noqa: F401
from shift.scoring import linear as _linear  # noqa: F401
from shift.scoring.plugins import (
    IndexScorer,
    ProxyFn,
    ProxySpec,
    estimator,
    proxy,
    registered,
)

__all__ = [
    "PROXIES",
    "IndexScorer",
    "ProxyFn",
    "ProxySpec",
    "estimator",
    "get_proxy",
    "proxy",
]


class _Proxies(Mapping[str, ProxySpec]):
    """Read-only view of the registry that imports the estimator modules on first use."""

    def _specs(self) -> dict[str, ProxySpec]:
        import shift.scoring.estimators  # noqa: F401  (each estimator registers on import)

        return registered()

    def __getitem__(self, name: str) -> ProxySpec:
        return self._specs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._specs()))

    def __len__(self) -> int:
        return len(self._specs())

    def __contains__(self, name: object) -> bool:
        return name in self._specs()

    def __repr__(self) -> str:
        return f"PROXIES({', '.join(self._specs())})"


PROXIES: Mapping[str, ProxySpec] = _Proxies()


def get_proxy(name: str) -> ProxySpec:
    """The ``ProxySpec`` called ``name``; ``KeyError`` (with suggestions) for unknown names."""
    try:
        return PROXIES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(PROXIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)}){hint}") from None
