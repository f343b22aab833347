"""A run end to end: its steps, the text embedder, counts, workers, progress, estimate and summary."""
