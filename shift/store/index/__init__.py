"""Per-(task, model) embedding indexes on disk: vectors, logits, labels and hnswlib graphs.

Modules, from records to the store that commits them:

* ``meta``   — IndexKey, IndexMeta, HnswConfig, the folder layout (file names) and the errors;
* ``arrays`` — input checks and ``.npy`` loads/saves that never unpickle;
* ``graphs`` — hnswlib graphs: build, extend, load, stage;
* ``reader`` — EmbeddingIndex, a loaded index (rows, select, k-NN), and its registry row;
* ``writer`` — IndexWriter, the resumable batch-by-batch build;
* ``store``  — IndexStore: open/verify, commit (meta.json last), append, relabel, prune;
* ``lock``   — the folder's commit lock and build lock.

Every file is written through ``shift.fsutil``'s staged atomic writes.
"""
