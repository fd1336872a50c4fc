"""The CLIP text tower with relative positions: stock CLIP minus the absolute positional embedding.

Token embedding -> N relative-position blocks -> ln_final -> pool -> text_projection.
Causal attention plus end-token pooling make everything after the end token irrelevant, so a 77-token batch fed
to a 248-token model gives the same features as the same captions padded to 248.

Bidirectional bases (``no_causal_mask``: SigLIP, SigLIP 2, CLIPA, MobileCLIP-S1/2) keep their attention: no mask
at all, so every token, padding included, attends to every other, as in the base (none of open_clip's bidirectional
configs masks padding). There the padding is part of the input: a caption's features depend on how many padding
columns follow it, and a shorter input is not the same as a padded one (``tokens.trims_padding_exactly`` is False).

'last' pooling (SigLIP, SigLIP 2, CLIPA) reads the last column of the input, the new context's last position at
the variant's length (column 247 at 248 tokens), exactly as open_clip's ``text_global_pool`` does for the uniform
and Long-CLIP variants of the same base. For a caption shorter than the context that column is padding, as it is
in the base (column 63 of SigLIP's 64 holds padding for any caption shorter than 64 tokens): the pooled row stays
a padding row that attends to the caption, for every caption the variant reads in full. The alternative, pooling
the column the base pooled (63), would keep the base's distance from that row to the caption's tokens but would
pool a caption word for every caption longer than the base's context, a row the base's projection never read.
"""
from typing import Callable, Dict, List, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from open_clip.transformer import lock_text_tower
from open_clip.utils import feature_take_indices

from .attention import RelPosResidualBlock
from .kernels.dispatch import COPE_IMPLS, triton_problem
from .rope import RotaryEmbedding, dynamic_ntk_theta
from .tokens import END_POOLING, pooled_positions


class RelPosTransformer(nn.Module):
    """The stack of blocks; owns the rotary tables shared by every layer (RoPE) and gradient checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, position: str, context_length: int,
                 rope_theta: float, mlp_ratio: float, ls_init_value: Optional[float], act_layer: Callable,
                 norm_layer: Callable, cope_qk_norm: bool, cope_scale: str, causal: bool = True):
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([
            RelPosResidualBlock(width, heads, position, context_length, mlp_ratio, ls_init_value, act_layer,
                                norm_layer, cope_qk_norm, cope_scale, causal)
            for _ in range(layers)
        ])
        self.rotary = RotaryEmbedding(width // heads, context_length, rope_theta) if position == "rope" else None

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def _run_block(self, block: nn.Module, x: torch.Tensor, query_rows: Optional[torch.Tensor] = None):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, self.rotary, query_rows, use_reentrant=False)
        return block(x, self.rotary, query_rows)

    def forward(self, x: torch.Tensor, query_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, L, width) -> (B, L, width); with ``query_rows`` (B,) int64 the last block computes only those
        rows (its keys and values still span all L) and the result is (B, width)."""
        for block in self.resblocks[:-1]:
            x = self._run_block(block, x)
        return self._run_block(self.resblocks[-1], x, query_rows)


class RelPosTextTransformer(nn.Module):
    """Drop-in replacement for ``open_clip.transformer.TextTransformer`` with RoPE or CoPE positions.

    ``pool_type`` / ``eos_id`` / ``no_causal_mask`` as open_clip's ``CLIPTextCfg`` (eos_id default 2, read only by
    'eos' pooling: the end id is the tokenizer's, not CLIP's; ``no_causal_mask=True``: bidirectional attention
    over the whole input, padding included, RoPE only). 'last' pooling reads the input's last column (the module
    docstring says why that column at a longer context).
    """

    def __init__(
            self,
            context_length: int = 248,
            vocab_size: int = 49408,
            width: int = 512,
            heads: int = 8,
            layers: int = 12,
            mlp_ratio: float = 4.0,
            ls_init_value: Optional[float] = None,
            output_dim: Optional[int] = 512,
            position: str = "rope",
            rope_theta: float = 10000.0,
            rope_ntk_factor: Optional[float] = None,
            rope_ntk_trained_length: int = 77,
            cope_qk_norm: bool = True,
            cope_scale: str = "tulip",
            pool_type: str = "argmax",
            eos_id: int = 2,
            no_causal_mask: bool = False,
            proj_bias: bool = False,
            output_tokens: bool = False,
            act_layer: Callable = nn.GELU,
            norm_layer: Callable = nn.LayerNorm,
    ):
        super().__init__()
        if pool_type not in ("argmax", "eos", "last"):
            raise ValueError(f"pool_type {pool_type!r} is not supported by the relative-position text tower")
        # Whether every block masks future keys (tokens.trims_padding_exactly reads it).
        self.causal = not no_causal_mask
        self.output_tokens = output_tokens
        # Without token outputs only the pooled row of the last block is read, and that row can be computed alone
        # (all keys, one query, one MLP row per caption), causal or not: same features, less work.
        self.last_block_at_pooled_rows = True
        self.context_length = self.num_pos = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.heads = heads
        self.output_dim = output_dim
        self.position = position
        self.pool_type = pool_type
        self.eos_id = eos_id
        head_dim = width // heads
        # The settings that change embeddings: checked against a checkpoint's saved config on load.
        if position == "rope":
            self.position_config = {"pos_embed_type": position, "rope_theta": float(rope_theta),
                                    "rope_ntk_factor": rope_ntk_factor,
                                    "rope_ntk_trained_length": rope_ntk_trained_length}
        else:
            self.position_config = {"pos_embed_type": position, "cope_qk_norm": cope_qk_norm,
                                    "cope_scale": cope_scale}
        if position == "rope" and rope_ntk_factor:
            rope_theta = dynamic_ntk_theta(rope_theta, head_dim, rope_ntk_factor, rope_ntk_trained_length,
                                           context_length)
        self.rope_theta = rope_theta if position == "rope" else None

        self.token_embedding = nn.Embedding(vocab_size, width)
        self.transformer = RelPosTransformer(width, layers, heads, position, context_length, rope_theta, mlp_ratio,
                                             ls_init_value, act_layer, norm_layer, cope_qk_norm, cope_scale,
                                             self.causal)
        self.ln_final = norm_layer(width)
        if not output_dim:
            self.text_projection = None
        elif proj_bias:
            self.text_projection = nn.Linear(width, output_dim)
        else:
            self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_parameters()

    def init_parameters(self):
        """CLIP's text-tower initialisation (GPT-2 style residual scaling); CoPE tables stay at zero."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        attn_std = self.width ** -0.5
        proj_std = attn_std * (2 * self.transformer.layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        if isinstance(self.text_projection, nn.Linear):
            nn.init.normal_(self.text_projection.weight, std=attn_std)
            nn.init.zeros_(self.text_projection.bias)
        elif self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=attn_std)

    def fresh_init_keys(self) -> List[str]:
        """Parameters a stock 77-token CLIP checkpoint does not have (freshly initialised on conversion)."""
        return [name for name, _ in self.named_parameters() if ".cope." in name or ".q_ln." in name
                or ".k_ln." in name]

    def set_cope_impl(self, impl: str = "function"):
        """CoPE attention implementation of every layer (not saved with the weights):

        - "function" (the default): memory-lean; the PyTorch op, or the Triton kernels when the environment sets
          ``OPEN_CLIP_EXT_COPE_IMPL=triton``;
        - "torch": memory-lean, the pure-PyTorch op on every device;
        - "triton": the fused Triton kernels (CUDA tensors, L <= 512; opt-in: they have not passed a GPU check);
        - "autograd": op by op, every (B, H, L, L) intermediate saved (kept for checks).

        The first eager forward logs which runs (``kernels/dispatch.py``). Raises ValueError for another name or on
        a RoPE tower, RuntimeError for "triton" where Triton does not import (a non-CUDA input fails at forward).
        """
        if self.position != "cope":
            raise ValueError(f"set_cope_impl needs a CoPE tower, this one uses {self.position!r}")
        if impl not in COPE_IMPLS:
            raise ValueError(f"cope_impl must be one of {COPE_IMPLS}, got {impl!r}")
        problem = triton_problem() if impl == "triton" else None
        if problem:
            raise RuntimeError(f"set_cope_impl('triton'): {problem}")
        for block in self.transformer.resblocks:
            block.attn.cope_impl = impl

    def set_position_scaling(self, kind: str, context_length: int) -> dict:
        """Read ``context_length`` tokens with RoPE position scaling ``kind`` ('none', 'ntk', 'yarn'; defined in
        ``open_clip_ext.rope``) over the context the tower was built with: a runtime override, not saved and not a
        config edit (``position_config``, which the loader checks checkpoints against, is unchanged). Tokenize with
        ``open_clip.get_tokenizer(name, context_length=context_length)``. Returns the setting, as ``position_scaling``:
        {'kind', 'trained_length', 'context_length'}.

        Raises ValueError on a CoPE tower (its per-layer position table has no entry past the length it was built
        with), for an unknown kind or a non-positive length."""
        if self.position != "rope":
            raise ValueError(
                f"position scaling needs a RoPE tower; this one is {self.position!r}: its per-layer position table "
                f"has {self.context_length} entries and none past them, so it cannot read a longer context (build it "
                f"at the longer length and train the table there, as TULIP's CoPE stage 2 does)")
        rotary = self.transformer.rotary
        rotary.set_scaling(kind, context_length)
        self.context_length = self.num_pos = context_length
        self.position_scaling = {"kind": kind, "trained_length": rotary.trained_length,
                                 "context_length": context_length}
        return self.position_scaling

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.transformer.grad_checkpointing = enable

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """Freeze the tower except the last ``unlocked_layers`` groups (open_clip's LiT-style locking)."""
        if not freeze_layer_norm:
            raise ValueError("unfreezing LayerNorm separately is not supported (as in open_clip)")
        lock_text_tower(self, unlocked_layers)

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection.to(pooled.dtype)

    def _pool_rows(self, text: torch.Tensor) -> torch.Tensor:
        """(B,) int64 index of the pooled token, as ``open_clip.transformer.text_global_pool`` picks it."""
        if self.pool_type in END_POOLING:
            return pooled_positions(text, self.pool_type, self.eos_id)
        return torch.full(text.shape[:1], text.shape[-1] - 1, dtype=torch.long, device=text.device)

    def _pool(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return x[torch.arange(x.shape[0], device=x.device), self._pool_rows(text)]

    def _embed(self, text: torch.Tensor) -> torch.Tensor:
        if text.shape[-1] > self.context_length:
            raise ValueError(
                f"got {text.shape[-1]} tokens but this text tower was built for {self.context_length}; "
                f"tokenize with context_length={self.context_length} or create the model with a larger "
                f"force_context_length")
        return self.token_embedding(text).to(self.transformer.get_cast_dtype())

    def forward(self, text: torch.Tensor):
        """text (B, L) int64 token ids -> features (B, output_dim), plus tokens (B, L, width) if output_tokens."""
        x = self._embed(text)
        if self.last_block_at_pooled_rows and not self.output_tokens:
            # ln_final is per token, so normalising the pooled row alone is the same as pooling after it.
            return self._project(self.ln_final(self.transformer(x, query_rows=self._pool_rows(text))))
        tokens = self.ln_final(self.transformer(x))
        pooled = self._project(self._pool(tokens, text))
        if self.output_tokens:
            return pooled, tokens
        return pooled

    def forward_intermediates(
            self,
            text: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            stop_early: bool = False,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            output_fmt: str = "NLC",
            output_extra_tokens: bool = False,
    ) -> Dict[str, Union[torch.Tensor, List[torch.Tensor]]]:
        """open_clip's intermediate-feature API: per-block token features (NLC) and the final features."""
        if output_fmt != "NLC":
            raise ValueError("text intermediates are only available in NLC format")
        blocks = self.transformer.resblocks
        take_indices, max_index = feature_take_indices(len(blocks), indices)
        x = self._embed(text)
        intermediates = []
        last = max_index if stop_early else len(blocks) - 1
        for i, block in enumerate(blocks[:last + 1]):
            x = self.transformer._run_block(block, x)
            if i in take_indices:
                intermediates.append(self.ln_final(x) if normalize_intermediates else x)
        output = {"text_intermediates": intermediates}
        if intermediates_only:
            return output
        output["text_features"] = self._project(self._pool(self.ln_final(x), text))
        return output
