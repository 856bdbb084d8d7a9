"""Storage: the SQLite registry, tasks' sample chunks and the per-task embedding indexes."""
