"""CLIP text encoders with relative positions (RoPE or CoPE) as transformers models.

Self-contained (imports torch and transformers only): this file is copied next to exported weights and loaded with
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` on machines without open_clip_ext.

The computation is CLIP's text tower without its learned position table: token embedding -> N pre-norm causal
blocks -> final LayerNorm -> the feature at the end-of-text token -> linear projection. Position enters inside
attention only:
- RoPE (Su et al. 2021) in the interleaved-pair convention: channels (2i, 2i+1) of every query and key head are
  rotated by the angle ``position * theta ** (-2i / head_dim)``;
- CoPE (Golovneva et al. 2024): a query's position for key j is the sum of sigmoid gates of the (causally masked)
  attention logits over keys j..query; the positional logit is read from a per-layer table at that fractional
  position by linear interpolation between integer entries.
Parameter names follow ``transformers.CLIPTextModelWithProjection`` (``text_model.embeddings.token_embedding``,
``text_model.encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``,
``text_model.final_layer_norm``, ``text_projection``); CoPE adds ``self_attn.cope_table`` (1, head_dim, positions)
and ``self_attn.q_norm`` / ``self_attn.k_norm``.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .configuration_relpos_clip import RelPosCLIPTextConfig


@dataclass
class RelPosCLIPTextModelOutput(ModelOutput):
    """Outputs of ``RelPosCLIPTextModelWithProjection``, in the order of ``CLIPTextModelOutput`` (so ``output[0]`` is
    the 2-D ``text_embeds``, which is how diffusers' SDXL ``encode_prompt`` recognises its pooled encoder).

    text_embeds: (batch, projection_dim), the projected sentence feature.
    last_hidden_state: (batch, seq, hidden_size), after the final LayerNorm.
    pooler_output: (batch, hidden_size), the final-normed feature at the pooled position, before projection.
    hidden_states: with ``output_hidden_states``: num_hidden_layers + 1 tensors (batch, seq, hidden_size): the token
        embeddings, then each block's output (the last one before the final LayerNorm), as in transformers' CLIP.
    """

    text_embeds: Optional[torch.FloatTensor] = None
    last_hidden_state: Optional[torch.FloatTensor] = None
    pooler_output: Optional[torch.FloatTensor] = None
    hidden_states: Optional[Tuple[torch.FloatTensor, ...]] = None


def rotate_pairs(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on x (batch, heads, seq, head_dim): pair (x[2i], x[2i+1]) rotated by position * theta**(-2i/head_dim).

    Angles are computed in float64 and the rotation in at least float32, then cast back to x's dtype, so that late
    positions keep their precision under half-precision weights.
    """
    seq_len, head_dim = x.shape[-2], x.shape[-1]
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=x.device) / head_dim
    angles = torch.arange(seq_len, dtype=torch.float64, device=x.device)[:, None] * theta ** -exponents[None, :]
    compute = torch.promote_types(x.dtype, torch.float32)
    cos, sin = angles.cos().to(compute), angles.sin().to(compute)
    even, odd = x.to(compute)[..., 0::2], x.to(compute)[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class RelPosCLIPAttention(nn.Module):
    """Causal multi-head self-attention with RoPE or CoPE positions."""

    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_dim = width // self.heads
        self.position_type = config.position_type
        self.rope_theta = config.rope_theta
        self.cope_scale = config.cope_scale
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        if self.position_type == "cope":
            self.cope_table = nn.Parameter(torch.zeros(1, self.head_dim, config.max_position_embeddings))
            qk_norm = config.cope_qk_norm
            self.q_norm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else nn.Identity()
            self.k_norm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps) if qk_norm else nn.Identity()

    def _heads(self, projection: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return projection(x).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def _cope(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seq_len, table_len = q.shape[-2], self.cope_table.shape[-1]
        if seq_len > table_len:
            raise ValueError(f"{seq_len} tokens exceed the CoPE table's {table_len} positions; truncate the input "
                             f"to max_position_embeddings={table_len}")
        q, k = self.q_norm(q), self.k_norm(k)
        scale = self.head_dim ** -0.5
        # TULIP's weights were trained with q scaled twice (1/d overall) and the table read by the once-scaled q.
        table_query = q * scale if self.cope_scale == "tulip" else q
        logit_query = table_query * scale if self.cope_scale == "tulip" else q * scale
        logits = logit_query @ k.transpose(-1, -2)
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
        # position[i, j] = sum of gates over keys j..i (future keys have gate sigmoid(-inf) = 0)
        gates = torch.sigmoid(logits)
        position = gates.flip(-1).cumsum(-1).flip(-1).clamp(0, table_len - 1)
        at_integer = table_query @ self.cope_table.to(q.dtype)  # (batch, heads, seq, table_len)
        below = at_integer.gather(-1, position.floor().long())
        above = at_integer.gather(-1, position.ceil().long())
        logits = logits + below + (position - position.floor()) * (above - below)
        return logits.softmax(dim=-1).to(v.dtype) @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj, x), self._heads(self.k_proj, x), self._heads(self.v_proj, x)
        if self.position_type == "rope":
            q, k = rotate_pairs(q, self.rope_theta), rotate_pairs(k, self.rope_theta)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = self._cope(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class RelPosCLIPMLP(nn.Module):
    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class RelPosCLIPEncoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then + mlp(ln2(.))."""

    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = RelPosCLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = RelPosCLIPMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class RelPosCLIPEmbeddings(nn.Module):
    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)


class RelPosCLIPEncoder(nn.Module):
    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList([RelPosCLIPEncoderLayer(config) for _ in range(config.num_hidden_layers)])


class RelPosCLIPTextTransformer(nn.Module):
    """Embeddings, blocks, final LayerNorm and pooling (no projection)."""

    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = RelPosCLIPEmbeddings(config)
        self.encoder = RelPosCLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _pool_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.config.pool_type == "argmax":  # CLIP's end-of-text token is the largest id of its vocabulary
            return input_ids.argmax(dim=-1)
        if self.config.pool_type == "eos":
            return (input_ids == self.config.eos_token_id).int().argmax(dim=-1)
        return torch.full_like(input_ids[:, 0], input_ids.shape[-1] - 1)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        if input_ids.shape[-1] > self.config.max_position_embeddings:
            raise ValueError(f"got {input_ids.shape[-1]} tokens, the model takes at most "
                             f"{self.config.max_position_embeddings}; tokenize with truncation=True, "
                             f"max_length={self.config.max_position_embeddings}")
        x = self.embeddings.token_embedding(input_ids)
        hidden_states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            hidden_states.append(x)
        last = self.final_layer_norm(x)
        pooled = last[torch.arange(last.shape[0], device=last.device), self._pool_index(input_ids).to(last.device)]
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled,
                                          hidden_states=tuple(hidden_states) if output_hidden_states else None)


class RelPosCLIPTextPreTrainedModel(PreTrainedModel):
    config_class = RelPosCLIPTextConfig
    base_model_prefix = "text_model"
    _no_split_modules = ["RelPosCLIPEncoderLayer"]

    def _init_weights(self, module):
        """CLIP-style initialisation for weights a checkpoint does not provide (CoPE tables start at zero)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, RelPosCLIPAttention) and module.position_type == "cope":
            nn.init.zeros_(module.cope_table)

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.embeddings.token_embedding = value

    def _run(self, input_ids, attention_mask, output_attentions, output_hidden_states):
        if input_ids is None:
            raise ValueError("input_ids is required")
        if output_attentions:
            raise ValueError("output_attentions is not supported (RoPE attention runs in a fused kernel)")
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        # attention_mask is accepted for tokenizer(...) outputs and not applied: attention is causal and the
        # sentence feature is read at the end-of-text token, so right padding never reaches it (as in open_clip).
        del attention_mask
        return self.text_model(input_ids, output_hidden_states=output_hidden_states)


class RelPosCLIPTextModel(RelPosCLIPTextPreTrainedModel):
    """The text tower without projection; outputs ``BaseModelOutputWithPooling`` like ``CLIPTextModel``
    (``output[0]`` is last_hidden_state, the form diffusers expects of SDXL's first text encoder).

    forward(input_ids (batch, seq) int64, output_hidden_states=None, return_dict=None):
        last_hidden_state (batch, seq, hidden), pooler_output (batch, hidden), hidden_states (layers + 1 tensors).
    Raises ValueError for more than max_position_embeddings tokens, a missing input_ids or output_attentions=True.
    """

    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__(config)
        self.text_model = RelPosCLIPTextTransformer(config)
        self.post_init()

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs):
        outputs = self._run(input_ids, attention_mask, output_attentions, output_hidden_states)
        return outputs if return_dict is not False else outputs.to_tuple()


class RelPosCLIPTextModelWithProjection(RelPosCLIPTextPreTrainedModel):
    """The text tower with its projection, as ``CLIPTextModelWithProjection``.

    forward(input_ids (batch, seq) int64, output_hidden_states=None, return_dict=None) -> RelPosCLIPTextModelOutput:
        text_embeds (batch, projection_dim), last_hidden_state, pooler_output, hidden_states (see the output class).
    Raises ValueError for more than max_position_embeddings tokens, a missing input_ids or output_attentions=True.
    """

    def __init__(self, config: RelPosCLIPTextConfig):
        super().__init__(config)
        self.text_model = RelPosCLIPTextTransformer(config)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=config.projection_bias)
        self.post_init()

    def forward(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                output_attentions: Optional[bool] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs):
        outputs = self._run(input_ids, attention_mask, output_attentions, output_hidden_states)
        result = RelPosCLIPTextModelOutput(text_embeds=self.text_projection(outputs.pooler_output),
                                           last_hidden_state=outputs.last_hidden_state,
                                           pooler_output=outputs.pooler_output,
                                           hidden_states=outputs.hidden_states)
        return result if return_dict is not False else result.to_tuple()
