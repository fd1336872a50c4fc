"""RoPE / CoPE text towers as transformers models with their own code (``trust_remote_code``).

transformers' CLIP adds a learned position table, which RoPE and CoPE towers do not have, so they are exported as
``RelPosCLIPTextModelWithProjection`` (hf_code/modeling_relpos_clip.py, written for this package, importing only
torch and transformers). The directory carries that code and an ``auto_map`` in config.json, so
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` works without open_clip_ext; where open_clip_ext is
installed, importing ``open_clip_ext.export`` registers the same classes with ``AutoConfig`` / ``AutoModel`` /
``AutoModelForTextEncoding``, so no remote code is needed. The image tower goes to ``<dir>/vision`` as a standard
``CLIPVisionModelWithProjection``.
"""
import shutil
from pathlib import Path

from torch import nn

from ..text_tower import RelPosTextTransformer
from .hf_code import configuration_relpos_clip, modeling_relpos_clip
from .hf_code.configuration_relpos_clip import RelPosCLIPTextConfig
from .hf_code.modeling_relpos_clip import RelPosCLIPTextModel, RelPosCLIPTextModelWithProjection
from .tokenizer import EOT, clip_tokenizer, write_vocab_files
from .transformers_clip import (OPEN_CLIP_VOCAB, ExportError, expected_shapes, hf_state_dict, hf_text_config,
                                hf_vision_config, image_processor_for, save_safetensors)

CODE_FILES = (configuration_relpos_clip.__file__, modeling_relpos_clip.__file__)
AUTO_MAP = {
    "AutoConfig": "configuration_relpos_clip.RelPosCLIPTextConfig",
    "AutoModel": "modeling_relpos_clip.RelPosCLIPTextModelWithProjection",
    "AutoModelForTextEncoding": "modeling_relpos_clip.RelPosCLIPTextModel",
}
VISION_SUBFOLDER = "vision"


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForTextEncoding`` resolve ``relpos_clip_text_model``
    directories to this package's classes (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForTextEncoding

    AutoConfig.register(RelPosCLIPTextConfig.model_type, RelPosCLIPTextConfig, exist_ok=True)
    AutoModel.register(RelPosCLIPTextConfig, RelPosCLIPTextModelWithProjection, exist_ok=True)
    AutoModelForTextEncoding.register(RelPosCLIPTextConfig, RelPosCLIPTextModel, exist_ok=True)


def relpos_config(model, pad_token_id: int) -> RelPosCLIPTextConfig:
    """The ``RelPosCLIPTextConfig`` of an open_clip model with a RoPE / CoPE text tower.

    Raises:
        ExportError: the text tower is not a ``RelPosTextTransformer``, has LayerScale or is bidirectional.
    """
    text = getattr(model, "text", None)
    if not isinstance(text, RelPosTextTransformer):
        raise ExportError(f"text tower {type(text).__name__} has no relative positions; export it as a "
                          f"transformers CLIPModel (open_clip_ext.export.export_clip)")
    if not text.causal:
        raise ExportError("text tower is bidirectional (no_causal_mask=True); the exported code attends causally")
    fields = hf_text_config(model, pad_token_id)
    position = dict(text.position_config)
    options = {"position_type": position.pop("pos_embed_type"), "pool_type": text.pool_type,
               "projection_bias": isinstance(text.text_projection, nn.Linear)}
    if options["position_type"] == "rope":
        options["rope_theta"] = text.rope_theta  # effective base: any NTK rescaling is already applied
    else:
        options.update(cope_qk_norm=position["cope_qk_norm"], cope_scale=position["cope_scale"])
    if text.pool_type == "eos":
        fields["eos_token_id"] = text.eos_id
    return RelPosCLIPTextConfig(**fields, **options)


def export_relpos_text_model(model, directory, tokenizer: bool = True, pad_token: str = EOT,
                             vision: bool = True) -> Path:
    """Write the model's RoPE / CoPE text tower as a transformers model directory with its own code.

    Files: config.json (with ``auto_map``), model.safetensors (text tower, current dtype),
    configuration_relpos_clip.py, modeling_relpos_clip.py, tokenizer files (``tokenizer``), and with ``vision``
    the image tower as ``CLIPVisionModelWithProjection`` plus its ``CLIPImageProcessor`` in ``<dir>/vision``.
    Returns the directory. Raises ``ExportError`` for a tower the exported code does not reproduce.
    """
    directory = Path(directory)
    config = relpos_config(model, pad_token_id=OPEN_CLIP_VOCAB - 1 if pad_token == EOT else 0)
    tensors = hf_state_dict(model, expected_shapes(RelPosCLIPTextModelWithProjection, config), prefixes=("text.",))
    directory.mkdir(parents=True, exist_ok=True)
    config.auto_map = dict(AUTO_MAP)
    config.architectures = ["RelPosCLIPTextModelWithProjection"]
    config.save_pretrained(str(directory))
    save_safetensors(tensors, directory / "model.safetensors")
    for path in CODE_FILES:
        shutil.copy(path, directory / Path(path).name)
    if tokenizer:
        if config.vocab_size != OPEN_CLIP_VOCAB:
            raise ExportError(f"text vocabulary has {config.vocab_size} tokens, open_clip's BPE tokenizer "
                              f"{OPEN_CLIP_VOCAB}; export with tokenizer=False and add the right one")
        clip_tokenizer(config.max_position_embeddings, pad_token).save_pretrained(str(directory))
        write_vocab_files(directory)
    if vision:
        export_vision_tower(model, directory / VISION_SUBFOLDER)
    return directory


def export_vision_tower(model, directory) -> Path:
    """The image tower as a transformers ``CLIPVisionModelWithProjection`` directory (with image processor)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    directory = Path(directory)
    config = CLIPVisionConfig(**hf_vision_config(model.visual))
    tensors = hf_state_dict(model, expected_shapes(CLIPVisionModelWithProjection, config), prefixes=("visual.",))
    directory.mkdir(parents=True, exist_ok=True)
    config.architectures = ["CLIPVisionModelWithProjection"]
    config.save_pretrained(str(directory))
    save_safetensors(tensors, directory / "model.safetensors")
    image_processor_for(model).save_pretrained(str(directory))
    return directory
