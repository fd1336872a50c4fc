"""Configuration of a CLIP text encoder whose positions are relative (RoPE or CoPE) instead of a learned table.

Self-contained (imports transformers only): this file is copied next to exported weights and loaded with
``trust_remote_code=True`` on machines without open_clip_ext.
"""
from transformers import PretrainedConfig

POSITION_TYPES = ("rope", "cope")
COPE_SCALES = ("tulip", "paper")
POOL_TYPES = ("argmax", "eos", "last")


class RelPosCLIPTextConfig(PretrainedConfig):
    """Shapes and position settings of ``RelPosCLIPTextModel(WithProjection)``.

    Field names follow ``transformers.CLIPTextConfig`` where the meaning is the same. Additions:
    ``position_type`` ("rope" or "cope"); ``rope_theta``: the rotary base actually used (any NTK rescaling already
    applied); ``cope_qk_norm`` / ``cope_scale``: CoPE's per-head LayerNorm on q and k and its logit scaling
    ("tulip": 1/d overall with the position table read by the q scaled once, as TULIP's released weights;
    "paper": 1/sqrt(d)); ``pool_type``: where the sentence feature is read ("argmax": at the largest token id, i.e.
    the end-of-text token of CLIP's vocabulary; "eos": at the first ``eos_token_id``; "last": the last position);
    ``projection_bias``: whether the text projection has a bias. ``max_position_embeddings`` is the longest input
    (RoPE has no table, CoPE's table has that many entries).

    Raises:
        ValueError: unknown position_type / cope_scale / pool_type, or hidden_size not divisible into heads of even
            size (RoPE rotates channel pairs).
    """

    model_type = "relpos_clip_text_model"

    def __init__(self, vocab_size=49408, hidden_size=512, intermediate_size=2048, projection_dim=512,
                 projection_bias=False, num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=248,
                 hidden_act="gelu", layer_norm_eps=1e-5, position_type="rope", rope_theta=10000.0,
                 cope_qk_norm=True, cope_scale="tulip", pool_type="argmax", initializer_range=0.02,
                 pad_token_id=0, bos_token_id=49406, eos_token_id=49407, **kwargs):
        if position_type not in POSITION_TYPES:
            raise ValueError(f"position_type must be one of {POSITION_TYPES}, got {position_type!r}")
        if cope_scale not in COPE_SCALES:
            raise ValueError(f"cope_scale must be one of {COPE_SCALES}, got {cope_scale!r}")
        if pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {pool_type!r}")
        if hidden_size % num_attention_heads or (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"hidden_size {hidden_size} must split into {num_attention_heads} heads of even size")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.projection_dim = projection_dim
        self.projection_bias = projection_bias
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.position_type = position_type
        self.rope_theta = float(rope_theta)
        self.cope_qk_norm = cope_qk_norm
        self.cope_scale = cope_scale
        self.pool_type = pool_type
        self.initializer_range = initializer_range
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
