"""Evaluation: ``python -m training_ext.eval`` compares open_clip models on the long-caption retrieval benchmarks
(evaluation datasets, read from their release layouts by eval.datasets) and zero-shot ImageNet."""
