"""Transferability estimators: pure numpy (float64) functions from frozen target features (or
the model's source-classifier logits) and target labels to a score; higher is better.

| function | paper | input |
|---|---|---|
| ``logme`` | You et al., ICML 2021 / JMLR 2022 | features |
| ``leep``, ``nce`` | Nguyen et al., ICML 2020; Tran et al., ICCV 2019 | source logits |
| ``hscore`` | Bao et al., ICIP 2019 | features (PCA ≤ 64) |
| ``shrinkage_hscore`` | Ibrahim et al., ICLR 2022 | features |
| ``transrate`` | Huang et al., ICML 2022 | features |
| ``gbc`` | Pándy et al., CVPR 2022 | features (PCA 64) |
| ``parc`` | Bolya et al., NeurIPS 2021 | features (PCA 32) |
| ``sfda`` | Shao et al., ECCV 2022 | features (PCA ≤ 64) |
| ``ncti`` (pool-relative) | Wang et al., ICCV 2023 | features (PCA 64) |
| ``lfc``, ``lgc`` | Deshpande et al., 2021 | features; per-sample gradients |

**Which labelled data.** Every estimator is defined on one labelled set, the target data a
fine-tune would see. In SHiFT the engine hands proxies ``(train_x, train_y, val_x, val_y)``;
the estimator proxies (each registered by ``@estimator`` next to its function) score the
**train split only** and ignore the validation split, for every estimator alike, so that scores
are comparable between estimators and with the kNN/linear proxies' training data.

Labels may be any values; they are remapped to ``0..C−1``. Feature estimators need at least two
rows and two classes; inputs are copied to float64 and never modified. The modules import only
numpy (no scipy, torch or scikit-learn).
"""

from __future__ import annotations

# knn and linear register first, also when this package is imported before the proxies module
# (imported directly, not through shift.scoring.proxies, which imports this package lazily)
from shift.scoring import knn as _knn  # noqa: F401
from shift.scoring import linear as _linear  # noqa: F401

# Importing a module registers its proxies (``@estimator``); this order is PROXIES' order.
# isort: off
from shift.scoring.estimators.logme import logme
from shift.scoring.estimators.leep import leep, nce
from shift.scoring.estimators.hscore import hscore, shrinkage_hscore
from shift.scoring.estimators.transrate import transrate
from shift.scoring.estimators.gbc import gbc
from shift.scoring.estimators.parc import parc
from shift.scoring.estimators.sfda import sfda
from shift.scoring.estimators.ncti import ncti, ncti_components, ncti_scores
from shift.scoring.estimators.linearized import lfc, lgc
# isort: on

__all__ = [
    "gbc",
    "hscore",
    "leep",
    "lfc",
    "lgc",
    "logme",
    "ncti",
    "ncti_components",
    "ncti_scores",
    "nce",
    "parc",
    "sfda",
    "shrinkage_hscore",
    "transrate",
]
