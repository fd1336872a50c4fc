"""Long-CLIP's text tower: CLIP's learned absolute positions stretched from 77 to 248, the first 20 frozen.

Long-CLIP (Zhang et al., ECCV 2024, arXiv 2403.15378; github.com/beichenzbc/Long-CLIP @ 3966af9a,
model/longclip.py) keeps a stock CLIP text tower and only changes its position table:
- positions 0..keep-1 (keep = 20) are the stock rows, unchanged; Long-CLIP found them well trained and keeps them
  fixed during fine-tuning;
- the remaining stock rows are stretched over the rest of the new context by linear interpolation between
  neighbours (four new rows per stock row at 77 -> 248), the last stock segment extended past the last row
  (extrapolation), so that 20 + 4 * 57 = 248 rows come out.
Its checkpoints hold two full-length tables, ``positional_embedding`` (rows < keep are read from it) and
``positional_embedding_res`` (rows >= keep are read from it). This tower keeps those names so Long-CLIP's
checkpoints map one to one; ``positional_embedding`` is a buffer here, so no optimizer, weight decay or
``requires_grad_`` call can ever move the kept rows.
"""
from typing import Optional

import torch
from torch import nn
from open_clip.transformer import TextTransformer, lock_text_tower

LONGCLIP_KEEP_POSITIONS = 20


def stretch_positions(table: torch.Tensor, length: int, keep: int = LONGCLIP_KEEP_POSITIONS) -> torch.Tensor:
    """Long-CLIP's rule: a (length, width) table from a shorter (old, width) learned position table.

    New row r < keep is old row r. New row r >= keep reads the old table at the fractional position
    keep + (r - keep) / s, s = (length - keep) / (old - keep) (4 for 77 -> 248), linearly between the two old rows
    around it; positions past the last old row continue the last segment's slope (extrapolation).
    """
    old, width = table.shape
    if not 0 <= keep <= old - 2:
        raise ValueError(f"cannot keep {keep} positions of a {old}-row table and interpolate the rest "
                         f"(needs keep <= {old - 2})")
    if length < old:
        raise ValueError(f"Long-CLIP's rule stretches a position table; {old} rows cannot become {length}")
    source = table.float()
    stretch = (length - keep) / (old - keep)
    position = keep + torch.arange(length - keep, dtype=torch.float64) / stretch
    # The segment each new row lies on; the last segment serves every position beyond the last old row too.
    lower = position.floor().long().clamp(max=old - 2)
    weight = (position - lower).to(source.dtype).unsqueeze(1)
    tail = source[lower] * (1 - weight) + source[lower + 1] * weight
    return torch.cat([source[:keep], tail]).to(table.dtype)


class LongCLIPTextTransformer(TextTransformer):
    """open_clip's ``TextTransformer`` with Long-CLIP's two position tables and frozen leading rows.

    The embedding added at position p is ``positional_embedding[p]`` for p < keep_positions and
    ``positional_embedding_res[p]`` otherwise (Long-CLIP's ``pe * mask1 + pe_res * mask2``). Inputs shorter than
    the context work (the causal mask is cut to the input length), as in the relative-position towers. A
    bidirectional base (``no_causal_mask``: SigLIP, CLIPA, MobileCLIP-S) keeps its attention (no mask, padding
    attended to) and its pooling ('last': the input's last column, a padding column for a caption shorter than
    the context, as in the base), both open_clip's own code.
    """

    def __init__(self, *args, keep_positions: int = LONGCLIP_KEEP_POSITIONS, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cls_emb is not None:
            raise ValueError("the Long-CLIP text tower does not support embed_cls")
        if not 0 <= keep_positions < self.num_pos:
            raise ValueError(f"longclip_keep_positions must be in [0, {self.num_pos}), got {keep_positions}")
        self.keep_positions = keep_positions
        self.position_config = {"pos_embed_type": "longclip", "longclip_keep_positions": keep_positions}
        initial = self.positional_embedding.detach().clone()
        del self.positional_embedding  # the stock parameter; replaced by the frozen buffer of the same name
        self.register_buffer("positional_embedding", initial)
        self.positional_embedding_res = nn.Parameter(initial.clone())

    def init_parameters(self):
        super().init_parameters()
        if "positional_embedding_res" in self._parameters:
            # Both tables start equal, as Long-CLIP's conversion of a stock model makes them.
            with torch.no_grad():
                self.positional_embedding_res.copy_(self.positional_embedding)

    def position_table(self) -> torch.Tensor:
        """The (context_length, width) positions the tower adds to its token embeddings."""
        keep = self.keep_positions
        return torch.cat([self.positional_embedding[:keep], self.positional_embedding_res[keep:]])

    def fresh_init_keys(self):
        """Parameters a stock checkpoint lacks (none: the two tables are made from its 77 positions)."""
        return []

    def _embeds(self, text: torch.Tensor):
        seq_len = text.shape[-1]
        if seq_len > self.num_pos:
            raise ValueError(f"got {seq_len} tokens but this text tower was built for {self.num_pos}; tokenize "
                             f"with context_length={self.num_pos}")
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast_dtype) + self.position_table()[:seq_len].to(cast_dtype)
        attn_mask: Optional[torch.Tensor] = None
        if self.attn_mask is not None:
            attn_mask = self.attn_mask[:seq_len, :seq_len]
        return x, attn_mask

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True):
        """open_clip's LiT-style locking; the trainable position rows go with the token embedding."""
        if not freeze_layer_norm:
            raise ValueError("unfreezing LayerNorm separately is not supported (as in open_clip)")
        lock_text_tower(self, unlocked_layers)
        self.positional_embedding_res.requires_grad = self.token_embedding.weight.requires_grad

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"positional_embedding", "positional_embedding_res"}
