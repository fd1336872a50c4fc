"""Offline data preparation (used by scripts/, never by a training process): dataset readers, the resumable
webdataset shard writer, ShareGPT4V and DCI conversions."""
