"""open_clip_ext: long-caption CLIP text towers (RoPE, CoPE) for open_clip."""
