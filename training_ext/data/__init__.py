"""Training and validation data inside a training process: CSV, webdataset, folder and synthetic smoke-run
sources, captions keyed by sample, and the precomputed teacher-embedding cache."""
