"""open_clip_ext: long-caption CLIP text towers (RoPE, CoPE) for open_clip.

``import open_clip_ext`` patches open_clip (see ``patches``) and registers the configs in model_configs/, after
which the ordinary open_clip API works on them::

    model, _, preprocess = open_clip.create_model_and_transforms('ViT-L-14-rope-248', pretrained='openai')
    tokenizer = open_clip.get_tokenizer('ViT-L-14-rope-248')
"""
from . import patches

patches.apply()

from .convert import CheckpointError, convert_state_dict, read_checkpoint  # noqa: E402
from .configs import derive_config, register_variant, shipped_config_dir  # noqa: E402
from .rope import RotaryEmbedding, dynamic_ntk_theta  # noqa: E402
from .cope import CoPE  # noqa: E402
from .text_tower import RelPosTextTransformer  # noqa: E402
from .tokens import token_layout, trim_padding, trims_padding_exactly, truncate_tokens  # noqa: E402
from .configs import register_shipped_configs as _register_shipped_configs  # noqa: E402

_register_shipped_configs()

__version__ = "0.1.0"
__all__ = [
    "CheckpointError", "CoPE", "RelPosTextTransformer", "RotaryEmbedding", "convert_state_dict", "derive_config",
    "dynamic_ntk_theta", "read_checkpoint", "register_variant", "shipped_config_dir", "token_layout", "trim_padding",
    "trims_padding_exactly", "truncate_tokens",
]
