"""TULIP's released stage-2 checkpoints, rebuilt at tiny-clip size from TULIP-equivalent computations.

What TULIP's stage 2 saves (github.com/ivonajdenkoska/tulip @ 132c174f,
open_clip/training/main_context_finetune_rope.py / _cope.py): a stock open_clip ``CLIP`` created with
``pretrained='openai'`` (open_clip 2.24's OpenAI loader: QuickGELU in both towers) whose ``token_embedding``,
``transformer``, ``ln_final`` and ``attn_mask`` were replaced by the distilled RoPE/CoPE student (GELU, TULIP's
classes' default); its ``text_projection`` and 77-row ``positional_embedding`` stay the CLIP's (the latter unused).
The file is ``{'epoch', 'name', 'state_dict', 'optimizer'}`` (plus ``'scaler'`` only under ``--precision amp``)
with flat stock-CLIP keys, ``module.``-prefixed when the model was wrapped in DistributedDataParallel.

The references here share no code with open_clip_ext: the image tower is open_clip's stock ``CLIP`` with
QuickGELU (what TULIP's model computes) or GELU (what eval_tulip.py computes with ``--pretrained=<file>``), the
text tower is the naive forward of tests/support/naive_towers.py with GELU.
"""
import open_clip
import pytest
import torch
from open_clip.model import CLIP

from open_clip_ext.configs import TULIP_EVAL_SCRIPT_SUFFIX, register_model_config, tulip_release_config
from support.naive_towers import randomize_, text_forward

HEADS = 4  # tiny-clip's text heads
HEAD_DIM = 16


def tiny_tulip_names(position: str):
    """(as-trained name, eval-script name) of the tiny TULIP config for ``position``."""
    name = f"TULIP-tiny-clip-{position}-248"
    return name, name + TULIP_EVAL_SCRIPT_SUFFIX


def register_tiny_tulip_configs():
    """Register TULIP-tiny-clip-{rope,cope}-248[-evalscript]; returns the names (for removal)."""
    names = []
    for position in ("rope", "cope"):
        trained, eval_script = tiny_tulip_names(position)
        register_model_config(trained, tulip_release_config("tiny-clip", position))
        register_model_config(eval_script, tulip_release_config("tiny-clip", position, eval_script=True))
        names += [trained, eval_script]
    return names


@pytest.fixture(scope="module")
def tiny_tulip_configs():
    """The tiny TULIP configs, registered for one test module."""
    names = register_tiny_tulip_configs()
    yield names
    for name in names:
        open_clip.factory._MODEL_CONFIGS.pop(name, None)


def stock_clip(quick_gelu: bool) -> CLIP:
    """open_clip's own tiny CLIP (learned 77 positions), as open_clip 2.24's loaders build it."""
    cfg = open_clip.get_model_config("tiny-clip")
    return CLIP(**cfg, quick_gelu=quick_gelu).eval()


def tulip_stage2_state_dict(position: str, table_length: int = 248, seed: int = 3):
    """Flat stock-CLIP keys of a TULIP stage-2 model with random weights; CoPE adds TULIP's per-layer tensors."""
    clip = randomize_(stock_clip(quick_gelu=True))
    state = {k: v.clone() for k, v in clip.state_dict().items()}
    if position == "cope":
        g = torch.Generator().manual_seed(seed)
        layer = 0
        while f"transformer.resblocks.{layer}.ln_1.weight" in state:
            p = f"transformer.resblocks.{layer}.attn."
            state[p + "cope.pos_emb"] = 0.3 * torch.randn(1, HEAD_DIM, table_length, generator=g)
            for norm in ("q_ln", "k_ln"):
                state[p + f"{norm}.weight"] = 1 + 0.2 * torch.randn(HEAD_DIM, generator=g)
                state[p + f"{norm}.bias"] = 0.1 * torch.randn(HEAD_DIM, generator=g)
            layer += 1
    return state


def save_tulip_release(path, state, ddp: bool):
    """Write ``state`` as TULIP's stage 2 does: epoch, run name, state_dict (``module.`` under DDP), optimizer."""
    params = {k: torch.nn.Parameter(v.clone()) for k, v in state.items() if v.is_floating_point()}
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-5, weight_decay=0.1)
    for p in params.values():
        p.grad = torch.ones_like(p)
    optimizer.step()
    prefix = "module." if ddp else ""
    torch.save({"epoch": 1, "name": "2025_01_01-dynamic_ntk_model_ViT-L-14-lr_1e-05",
                "state_dict": {prefix + k: v for k, v in state.items()},
                "optimizer": optimizer.state_dict()}, path)
    return str(path)


def reference_image_features(state, images, quick_gelu: bool) -> torch.Tensor:
    """open_clip's stock CLIP image tower with the checkpoint's weights: QuickGELU = TULIP's trained model,
    GELU = eval_tulip.py with ``--pretrained=<file>`` (stock config, file loaded into it)."""
    clip = stock_clip(quick_gelu)
    clip.load_state_dict({k: v for k, v in state.items() if k in clip.state_dict()})
    with torch.no_grad():
        return clip.encode_image(images)


def reference_text_features(state, ids, position: str) -> torch.Tensor:
    """TULIP's GELU student, theta 10000 (what eval_tulip.py runs), computed naively in float64, one caption at
    a time."""
    text_state = {f"text.{k}": v for k, v in state.items() if not k.startswith("visual.")}
    return torch.stack([text_forward(text_state, row, heads=HEADS, position=position) for row in ids])

