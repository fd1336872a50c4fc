"""Training side of open_clip_ext: TULIP's two stages built on open_clip_train."""
