"""Reading checkpoints safely and converting them onto a relative-position CLIP.

open_clip's own ``convert.py`` converts foreign formats to its layout; this module does the same for relative-position
and Long-CLIP models (the layouts are described in docs/checkpoints.md). Accepted sources:
- stock open_clip / OpenAI CLIP weights (77 learned positions, flat or ``text.``-prefixed keys): every tensor is
  taken except ``positional_embedding``; CoPE-only tensors keep their fresh initialisation;
- TULIP's released checkpoints: a stock-layout state_dict under ``state_dict`` with ``module.`` prefixes and an
  unused ``positional_embedding``; their image tower was trained with QuickGELU and their text tower with GELU
  (the ``TULIP-*`` configs say so per tower), and their CoPE tables are as long as TULIP's stage-2
  ``--extended-context-length`` (a length other than the model's is refused naming ``force_context_length``);
- this project's own checkpoints: full model, or text tower only (``text.*`` keys), optionally with the
  ``model_cfg`` they were trained with, whose position settings must match the model being loaded;
- onto a Long-CLIP tower: Long-CLIP's released checkpoints (OpenAI-style keys with ``positional_embedding`` and
  ``positional_embedding_res``, both 248 rows) map one to one; a stock 77-row ``positional_embedding`` is stretched
  by Long-CLIP's rule into both tables, as Long-CLIP's own conversion of a CLIP checkpoint does.
Only ``torch.load(weights_only=True)`` and safetensors are used: nothing is ever unpickled.
"""
import json
import logging
import pickle
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed
from open_clip.transformer import QuickGELU

import open_clip.factory

from .configs import POSITION_DEFAULTS, TOWER_CONFIG_KEYS, tower_quick_gelu
from .longclip import LongCLIPTextTransformer, stretch_positions
from .state_dicts import is_vision_key, strip_module_prefix

# Tensors stock checkpoints carry that a relative-position model has no use for.
_UNUSED_KEYS = ("text.positional_embedding", "text.attn_mask", "attn_mask",
                "input_resolution", "context_length", "vocab_size")
# Stage 1 distilling from cached embeddings of another width trains a linear map to that width, saved in its
# checkpoints under this prefix (so resuming restores it); it is not part of the CLIP model and is dropped here.
DISTILL_TARGET_MAP = "distill_target_map"
_MAX_LISTED = 12


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and keys."""


def weights_file_problem(path) -> Optional[str]:
    """Why the file at ``path`` cannot be a whole weights file, judged from its first bytes and its directory
    alone (cheap: no tensor is read); None when it looks whole.

    torch.save writes a zip archive whose directory comes last, so a copy or write cut short has none; a
    .safetensors file starts with the length of its JSON header, which must fit in the file; torch's pre-1.6
    format (a pickle) is left to torch.load to judge."""
    import zipfile
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        head = stream.read(8)
    if path.suffix == ".safetensors":
        header = int.from_bytes(head, "little") if len(head) == 8 else size
        return None if 8 + header <= size else f"a safetensors file of {size} bytes whose header says more: cut short"
    if head[:1] == b"\x80" or zipfile.is_zipfile(path):
        return None
    if head.startswith(b"PK"):
        return f"a zip archive of {size} bytes without the directory torch.save writes last: cut short"
    return f"{size} bytes starting {head[:4]!r}, not a zip archive"


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state_dict, metadata) from a .pt/.pth/.bin (weights_only) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
            metadata = dict(f.metadata() or {})
        if "model_cfg" in metadata:
            metadata["model_cfg"] = json.loads(metadata["model_cfg"])
        return state_dict, metadata
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refusing to load a checkpoint that needs arbitrary unpickling (weights_only=True "
            f"failed: {first_line}). Re-save it as a plain state_dict or safetensors.") from None
    except RuntimeError as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({e})") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        # Keep small facts (name, epoch, model_cfg); optimizer and scaler states are the trainer's business.
        metadata = {k: v for k, v in checkpoint.items()
                    if k == "model_cfg" or (k != "state_dict" and not isinstance(v, dict))}
        return checkpoint["state_dict"], metadata
    if isinstance(checkpoint, dict) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint, {}
    raise CheckpointError(f"{path}: holds no state_dict (found {type(checkpoint).__name__} with keys "
                          f"{list(checkpoint)[:8] if isinstance(checkpoint, dict) else '-'})")


def to_custom_text_layout(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Flat stock-CLIP text keys (``token_embedding.weight``...) -> ``text.``-prefixed CustomTextCLIP keys."""
    state_dict = strip_module_prefix(state_dict)
    if "token_embedding.weight" in state_dict or "text_projection" in state_dict:
        state_dict = convert_to_custom_text_state_dict(state_dict)
    return state_dict


def _listing(items: List[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def check_position_config(text_tower, metadata: dict, path) -> None:
    """Refuse a checkpoint trained with other position settings than the model (e.g. another NTK theta)."""
    text_cfg = (metadata.get("model_cfg") or {}).get("text_cfg") or {}
    saved_type = text_cfg.get("pos_embed_type")
    if saved_type is None:
        return
    model_cfg = text_tower.position_config
    if saved_type != model_cfg["pos_embed_type"]:
        raise CheckpointError(f"{path}: trained with pos_embed_type={saved_type!r}, model uses "
                              f"{model_cfg['pos_embed_type']!r}")
    saved = {**POSITION_DEFAULTS[saved_type], **{k: v for k, v in text_cfg.items() if k in model_cfg}}
    differing = [f"{k}: checkpoint {saved[k]!r} vs model {model_cfg[k]!r}"
                 for k in POSITION_DEFAULTS[saved_type] if saved.get(k) != model_cfg.get(k)]
    if differing:
        raise CheckpointError(f"{path}: position settings differ from the model config ({'; '.join(differing)}); "
                              f"create the model with the config it was trained with")


def longclip_position_tables(tower: LongCLIPTextTransformer, state_dict: Dict[str, torch.Tensor],
                             path="<state_dict>") -> Dict[str, torch.Tensor]:
    """Long-CLIP's two position tables (``text.``-prefixed keys) from a Long-CLIP or a stock checkpoint."""
    head_key, tail_key = "text.positional_embedding", "text.positional_embedding_res"
    head, tail = state_dict.get(head_key), state_dict.get(tail_key)
    if head is None:
        if tail is not None:
            raise CheckpointError(f"{path}: has {tail_key} but no {head_key} (Long-CLIP checkpoints hold both)")
        return state_dict  # reported as missing by convert_state_dict
    if tail is not None:
        return state_dict  # Long-CLIP's layout (or this project's): one to one
    rows, context = head.shape[0], tower.num_pos
    if rows > context:
        raise CheckpointError(f"{path}: {head_key} has {rows} positions, more than the model's {context}")
    if rows < context:
        logging.info(f"{path}: stretching {rows} learned positions to {context} by Long-CLIP's rule "
                     f"(first {tower.keep_positions} kept)")
        head = stretch_positions(head, context, tower.keep_positions)
    return {**state_dict, head_key: head, tail_key: head.clone()}


def convert_state_dict(model, state_dict: Dict[str, torch.Tensor], path="<state_dict>") -> Dict[str, torch.Tensor]:
    """Map a checkpoint onto ``model``'s keys; raise CheckpointError naming every misfit key and shape. Image
    positions saved for another grid are resized to the model's by ``open_clip.model.resize_pos_embed`` (bicubic,
    as open_clip loads stock weights under ``force_image_size``)."""
    state_dict = to_custom_text_layout(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(DISTILL_TARGET_MAP + ".")}
    # a vision tower built at another image size (--force-image-size) gets the image positions interpolated to its
    # grid, as open_clip.factory.load_checkpoint does for stock models (in place, on this function's own copy)
    resize_pos_embed(state_dict, model)
    if isinstance(model.text, LongCLIPTextTransformer):
        state_dict = longclip_position_tables(model.text, state_dict, path)
    target = model.state_dict()
    # Stock keys are dropped only where the model has no such tensor (a Long-CLIP tower keeps its positions).
    dropped = [k for k in _UNUSED_KEYS if k not in target and state_dict.pop(k, None) is not None]
    unexpected = sorted(k for k in state_dict if k not in target)
    mismatched = sorted(f"{k} {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
                        for k in state_dict if k in target and state_dict[k].shape != target[k].shape
                        and not _is_scalar_reshape(state_dict[k], target[k]))
    fresh = {f"text.{k}" for k in model.text.fresh_init_keys()}
    text_only = not any(is_vision_key(k) for k in state_dict)
    missing = [k for k in target if k not in state_dict]
    tolerated = [k for k in missing if k in fresh or (text_only and not k.startswith("text."))]
    missing = sorted(set(missing) - set(tolerated))
    problems = []
    table_hint = _cope_length_hint(state_dict, target)
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if problems:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(problems) + table_hint)
    converted = {k: v.reshape(target[k].shape) for k, v in state_dict.items()}
    for key in tolerated:
        converted[key] = target[key]
    fresh_taken = sorted(set(tolerated) & fresh)
    if fresh_taken:
        logging.info(f"{path}: {len(fresh_taken)} position tensors freshly initialised (not in checkpoint)")
    if text_only:
        logging.warning(f"{path}: text-tower-only checkpoint; image tower and logit scale keep their current values")
    if dropped:
        logging.info(f"{path}: ignored {dropped} (unused by relative-position text towers)")
    return converted


def _cope_length_hint(state_dict: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor]) -> str:
    """The fix, when the only trouble with the CoPE tables (1, head_dim, positions) is their length.

    TULIP's stage 2 builds its CoPE student at ``--extended-context-length`` (github.com/ivonajdenkoska/tulip @
    132c174f, open_clip/training/main_context_finetune_cope.py), so a released file's tables can be shorter or
    longer than the config's 248; the same config built at the table length loads it."""
    lengths = {state_dict[k].shape[-1] for k in state_dict
               if k.endswith(".cope.pos_emb") and k in target and state_dict[k].dim() == target[k].dim() == 3
               and state_dict[k].shape[:-1] == target[k].shape[:-1] and state_dict[k].shape != target[k].shape}
    if len(lengths) != 1:
        return ""
    n = lengths.pop()
    return (f". Its CoPE position tables hold {n} positions (TULIP's stage 2 sizes them by its "
            f"--extended-context-length): create the model at that length, open_clip.create_model(name, "
            f"pretrained=path, force_context_length={n}), and tokenize with open_clip.get_tokenizer(name, "
            f"context_length={n})")


def _is_scalar_reshape(saved: torch.Tensor, wanted: torch.Tensor) -> bool:
    # logit_scale is a scalar in some checkpoints and a 1-element vector in others.
    return saved.numel() == wanted.numel() == 1


def read_saved_model_cfg(path) -> Optional[dict]:
    """The ``model_cfg`` a checkpoint was saved with, read without loading its tensors (None if absent)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt", device="cpu") as f:
                saved = (f.metadata() or {}).get("model_cfg")
            return json.loads(saved) if saved else None
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable here: read_checkpoint reports it properly when the weights are loaded
        return None
    return checkpoint.get("model_cfg") if isinstance(checkpoint, dict) else None


def uses_quick_gelu(module) -> bool:
    return any(isinstance(m, QuickGELU) for m in module.modules())


# Config key of each tower -> (CLIP attribute holding it, the tower's name in messages).
_TOWERS = {"vision_cfg": ("visual", "image tower"), "text_cfg": ("text", "text tower")}


def check_activation(model, metadata: dict, path, towers=TOWER_CONFIG_KEYS) -> None:
    """Refuse weights trained with another activation (QuickGELU vs GELU) in any of ``towers``: they load but
    compute wrongly. The activation a checkpoint was trained with is read per tower from its saved ``model_cfg``
    (the tower's own ``quick_gelu`` key, else the model-level one); nothing is checked without a saved config.

    Raises:
        CheckpointError: naming each differing tower, both activations and the fix.
    """
    saved_cfg = metadata.get("model_cfg")
    if not saved_cfg:
        return
    differing = []
    for key in towers:
        attribute, where = _TOWERS[key]
        saved_quick, model_quick = tower_quick_gelu(saved_cfg, key), uses_quick_gelu(getattr(model, attribute))
        if saved_quick != model_quick:
            differing.append(f"{where} trained with quick_gelu={saved_quick} but the model uses "
                             f"quick_gelu={model_quick}")
    if differing:
        raise CheckpointError(
            f"{path}: {'; '.join(differing)}. Create the model with the config it was trained with (per tower: "
            f"vision_cfg.quick_gelu / text_cfg.quick_gelu, else the model-level quick_gelu; "
            f"open_clip.create_model(name, pretrained=path) follows a saved model-level quick_gelu=True by itself)")


def pretrained_uses_quick_gelu(name: str, pretrained) -> bool:
    """Whether the weights ``pretrained`` names were trained with QuickGELU (in either tower): the pretrained
    tag's config says (OpenAI weights do), or the ``model_cfg`` saved in a checkpoint file."""
    if not pretrained:
        return False
    tag_cfg = open_clip.factory.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        return bool(tag_cfg.get("quick_gelu"))
    if Path(pretrained).is_file():
        saved = read_saved_model_cfg(pretrained) or {}
        return any(tower_quick_gelu(saved, key) for key in TOWER_CONFIG_KEYS)
    return False


def load_checkpoint_into(model, path, strict: bool = True):
    """open_clip's ``load_checkpoint`` for models with a relative-position text tower."""
    state_dict, metadata = read_checkpoint(path)
    check_position_config(model.text, metadata, path)
    # A text-tower-only checkpoint leaves the image tower as it is, so only its text activation matters.
    has_vision = any(is_vision_key(k) for k in strip_module_prefix(state_dict))
    check_activation(model, metadata, path, TOWER_CONFIG_KEYS if has_vision else ("text_cfg",))
    converted = convert_state_dict(model, state_dict, path)
    return model.load_state_dict(converted, strict=strict)
