"""What TULIP's two stages add to the engine: stage 1 (relative position distillation, arXiv 2410.10034 sec. 3.2)
and stage 2 (context fine-tuning, with Long-CLIP's short-caption loss as an option)."""
