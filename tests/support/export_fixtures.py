"""Tiny open_clip models and captions for the export tests (tests/open_clip_ext/export/).

Every model gets every parameter perturbed, so that zero biases, identical Long-CLIP tables or zero CoPE tables
cannot hide a mapping mistake (swapped q/k/v biases, the wrong position table, a transposed projection).
"""
import os
import subprocess
import sys
from typing import List

import open_clip
import torch

import open_clip_ext  # noqa: F401  (registers the tiny configs)
from open_clip_ext.convert import convert_state_dict

STOCK, LONGCLIP, UNIFORM, ROPE, COPE = ("tiny-clip", "tiny-clip-longclip-248", "tiny-clip-uniform-248",
                                        "tiny-clip-rope-248", "tiny-clip-cope-248")
KEEP = 20
IMAGE_SIZE = 32

# Captions from 5 to past 248 tokens (open_clip tokens incl. start/end), with punctuation, digits and unicode.
_WORDS = ("red blue green small large wooden metal cat dog tree house river car street window lamp table "
          "behind under beside near old new bright dark").split()


def words(count: int, offset: int = 0) -> str:
    return " ".join(_WORDS[(offset + 7 * i) % len(_WORDS)] for i in range(count))


CAPTIONS = [
    "a red cat",                                                          # 5 tokens
    "Two dogs, one cat & 3 birds: what's going on?! (see café, naïve)",   # punctuation, digits, accents
    words(60) + ". " + words(14, 3),                                      # ~77
    words(150, 5) + ", 東京 🙂 ...",                                       # ~160, CJK and emoji
    words(300, 2),                                                        # truncated at 248, EOT kept last
]


def randomize_(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add N(0, scale) noise to every parameter and to Long-CLIP's frozen table (a buffer; the other buffers,
    causal masks and rotary tables, are functions of the shape and stay as they are)."""
    generator = torch.Generator().manual_seed(seed)
    tables = [b for name, b in model.named_buffers() if name.endswith("positional_embedding")]
    with torch.no_grad():
        for tensor in list(model.parameters()) + tables:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * scale)
    return model


def make_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A tiny model in eval mode with perturbed weights (random init, no download)."""
    torch.manual_seed(seed)
    return randomize_(open_clip.create_model(name, **kwargs), seed=seed).eval()


def stretched_stock(stock: torch.nn.Module) -> torch.nn.Module:
    """``stock`` (77 positions) loaded into a Long-CLIP tower: its positions stretched to 248, never fine-tuned."""
    model = open_clip.create_model(LONGCLIP).eval()
    model.load_state_dict(convert_state_dict(model, stock.state_dict()))
    return model


def token_ids(context_length: int = 248, captions: List[str] = CAPTIONS) -> torch.Tensor:
    return open_clip.get_tokenizer(LONGCLIP)(captions, context_length=context_length)


def images(count: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def run_without_open_clip_ext(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run python code in a fresh interpreter where ``import open_clip_ext`` fails (as on a machine without it)."""
    guard = "import sys; sys.modules['open_clip_ext'] = None\n"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-c", guard + script], capture_output=True, text=True, timeout=timeout,
                          env=env)
