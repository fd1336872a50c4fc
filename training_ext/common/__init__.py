"""Code that several concerns use: atomic file writes, caption text rules, folder pairing, retrieval metrics.

Nothing here imports the engine, the stages, data preparation or evaluation, so each of them can use it
without pulling in the others.
"""
