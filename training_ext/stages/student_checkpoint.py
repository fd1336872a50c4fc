"""Putting a stage-1 student text tower into the stage-2 CLIP model.

TULIP's reference (main_context_finetune_rope.py @ 132c174f) copied the student's transformer, token embedding and
final LayerNorm into the CLIP model but kept the CLIP model's own text projection, so the distilled projection was
thrown away. Here every text tensor of the student checkpoint (text projection included) replaces the model's, and
nothing else is touched; ``keep_text_projection=True`` reproduces TULIP's choice (``--recipe tulip-original``).
"""
import logging

import torch

from open_clip_ext import read_checkpoint
from open_clip_ext.convert import CheckpointError, check_position_config
from open_clip_ext.state_dicts import is_text_key, strip_module_prefix

TEXT_PROJECTION = "text.text_projection"
_NTK_KEYS = ("rope_ntk_factor", "rope_ntk_trained_length")


def _check_ntk_extension(text_tower, metadata: dict, path) -> None:
    """TULIP's stage 2 runs a stage-1 RoPE student with a dynamic-NTK base: the checkpoint must be RoPE with the
    model's theta and no NTK of its own, trained at the length the model's NTK rule starts from."""
    text_cfg = (metadata.get("model_cfg") or {}).get("text_cfg") or {}
    if not text_cfg:
        return
    model_cfg = text_tower.position_config
    problems = []
    if text_cfg.get("pos_embed_type") != "rope":
        problems.append(f"pos_embed_type {text_cfg.get('pos_embed_type')!r}, the NTK extension needs 'rope'")
    if float(text_cfg.get("rope_theta", 10000.0)) != model_cfg["rope_theta"]:
        problems.append(f"rope_theta {text_cfg.get('rope_theta')} vs model {model_cfg['rope_theta']}")
    if text_cfg.get("rope_ntk_factor"):
        problems.append(f"it already has rope_ntk_factor {text_cfg['rope_ntk_factor']}")
    if text_cfg.get("context_length") not in (None, model_cfg["rope_ntk_trained_length"]):
        problems.append(f"trained at {text_cfg['context_length']} tokens, the model's NTK rule starts from "
                        f"{model_cfg['rope_ntk_trained_length']}")
    if problems:
        raise CheckpointError(f"{path}: cannot be extended by dynamic NTK: {'; '.join(problems)}")


def load_student_text_tower(model: torch.nn.Module, path: str, keep_text_projection: bool = False,
                            ntk_extension: bool = False) -> int:
    """Copy the text tower of a stage-1 checkpoint into ``model``; returns the number of tensors copied.

    ``keep_text_projection``: leave the model's text projection (from --pretrained) in place, as TULIP did.
    ``ntk_extension``: the model is the checkpoint's RoPE tower with a dynamic-NTK base (TULIP's stage 2), so its
    position settings differ from the checkpoint's by design; they are checked by that rule instead.
    Fails naming the file and keys when the checkpoint's text tower does not fit the model (another context
    length, position encoding or width), or when its position settings differ from the model's config.
    """
    state_dict, metadata = read_checkpoint(path)
    state_dict = strip_module_prefix(state_dict)
    if hasattr(getattr(model, "text", None), "position_config"):
        if ntk_extension:
            _check_ntk_extension(model.text, metadata, path)
        else:
            check_position_config(model.text, metadata, path)
    wanted = {k: v for k, v in model.state_dict().items()
              if is_text_key(k) and not (keep_text_projection and k == TEXT_PROJECTION)}
    missing = sorted(k for k in wanted if k not in state_dict)
    misfit = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in wanted.items() if k in state_dict and state_dict[k].shape != v.shape)
    if missing or misfit:
        raise CheckpointError(
            f"--student-checkpoint {path} does not fit --model's text tower: "
            + "; ".join(part for part in (
                f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "",
                f"shapes {', '.join(misfit[:8])}" if misfit else "") if part))
    with torch.no_grad():
        for key, tensor in wanted.items():
            tensor.copy_(state_dict[key])
    projection = ("the original text projection of --pretrained kept (TULIP's recipe)" if keep_text_projection
                  else "distilled text projection included")
    logging.info(f"text tower ({len(wanted)} tensors, {projection}) from {path}; vision tower and logit scale "
                 "from --pretrained")
    return len(wanted)
