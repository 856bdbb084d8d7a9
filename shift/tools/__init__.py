"""Tools on top of the engine: doctor, fine-tuning, evaluation metrics."""
