"""Per-(task, model) embedding indexes on disk: vectors, logits, labels and hnswlib graphs."""
