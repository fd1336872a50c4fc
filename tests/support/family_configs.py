"""Shrunk stand-ins for open_clip's config families (open_clip_ext.support): one representative base per family
that supports some kind, shrunk to a 1-layer 32-wide text tower and tiny-clip's image tower (the text tower decides
support; the image towers of several families are full-size timm models). Nothing is downloaded: a Hugging Face
text tower becomes a tiny local transformers model, a tokenizer named on the hub a tiny local one in its layout."""
from copy import deepcopy
from pathlib import Path
from typing import Dict, Iterable, Optional

import open_clip

from open_clip_ext.support import ConfigSupport
from support.non_clip_tokenizers import hf_model_type, save_tiny_hf_tower, save_tokenizer, vocab_size

# hf_tokenizer_name of a shipped config with a CLIP-like text tower -> the layout of non_clip_tokenizers.LAYOUTS
# with its special ids (CLIPA's BERT tokenizer: [PAD] 0 ... [CLS] $A [SEP], the [SEP] stripped by open_clip)
TOKENIZER_LAYOUT = {"bert-base-uncased": "bert", "facebook/xlm-v-base": "xlmv", "timm/ViT-B-16-SigLIP": "siglip",
                    "timm/ViT-B-16-SigLIP2": "gemma"}


def representatives(bases: Iterable[ConfigSupport]) -> Dict[str, ConfigSupport]:
    """family -> its first base (``list_models()`` order) that supports some kind."""
    chosen: Dict[str, ConfigSupport] = {}
    for base in bases:
        if base.kinds:
            chosen.setdefault(base.family, base)
    return chosen


def shrunk_config(cfg: dict, folder: Path, texts: Optional[Iterable[str]] = None) -> dict:
    """``cfg`` with a 1-layer 32-wide text tower over 600 ids and tiny-clip's image tower. A Hugging Face text
    tower becomes a tiny transformers model of its type saved to ``folder``. With ``texts``, a tokenizer named on
    the hub (``hf_tokenizer_name``) becomes a tiny one in its layout trained on them, saved to ``folder``/tokenizer,
    and the vocabulary is the tokenizer's (CLIP's BPE: the base's own size)."""
    base_vocab = cfg["text_cfg"].get("vocab_size")
    cfg = deepcopy(cfg)
    tiny = open_clip.get_model_config("tiny-clip")
    cfg["embed_dim"], cfg["vision_cfg"] = tiny["embed_dim"], tiny["vision_cfg"]
    text_cfg = cfg["text_cfg"]
    text_cfg.update(width=32, heads=2, layers=1, vocab_size=600)
    if text_cfg.get("hf_model_name"):
        model_type = hf_model_type(text_cfg["hf_model_name"])
        text_cfg["hf_model_name"] = save_tiny_hf_tower(str(folder), model_type, vocab=600)
    elif texts is not None:
        if text_cfg.get("hf_tokenizer_name"):
            tokenizer = save_tokenizer(str(Path(folder) / "tokenizer"), TOKENIZER_LAYOUT[text_cfg["hf_tokenizer_name"]],
                                       texts)
            text_cfg.update(hf_tokenizer_name=tokenizer, vocab_size=vocab_size(tokenizer))
        else:
            text_cfg["vocab_size"] = base_vocab
    return cfg
