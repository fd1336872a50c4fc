"""Self-contained transformers code for the RoPE / CoPE text towers.

The two modules here import only torch and transformers (and each other, relatively): the exporter copies them
verbatim next to the weights so ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` works where
open_clip_ext is not installed. Where it is, ``open_clip_ext.export`` registers the same classes with the Auto API.
"""
