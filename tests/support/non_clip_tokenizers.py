"""Tiny local tokenizers in MetaCLIP 2's layouts and tiny MetaCLIP-2-like model configs (nothing is downloaded).

MetaCLIP 2 worldwide (open_clip's ``ViT-*-worldwide*`` configs) tokenizes with XLM-V (``<s>`` = 0, ``<pad>`` = 1,
``</s>`` = 2, ``<unk>`` = 3; a caption is ``<s> ... </s>``) or mT5 (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, no
start token; ``... </s>``) through open_clip's HFTokenizer, and pools its text tower at ``eos_id``. Here a word-level
``tokenizers`` model trained on the test's own texts takes each layout, saved as a transformers tokenizer folder
that a config's ``hf_tokenizer_name`` points at.
"""
import os
from copy import deepcopy
from typing import Iterable, Tuple

import open_clip
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from open_clip_ext.configs import register_model_config, register_variant

# layout: (special tokens in id order, post-processor template, transformers special-token roles, the tower's eos_id,
# the worldwide config whose text_cfg keys (tokenizer_kwargs) it copies)
LAYOUTS = {
    "xlmv": (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
             {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, 2,
             "ViT-H-14-worldwide"),
    "mt5": (["<pad>", "</s>", "<unk>"], "$A </s>",
            {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, 1, "ViT-L-14-worldwide"),
}


def save_tokenizer(folder: str, layout: str, texts: Iterable[str]) -> str:
    """A word-level tokenizer in ``layout`` whose vocabulary is the words of ``texts``, saved to ``folder``."""
    specials, template, roles, _, _ = LAYOUTS[layout]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(list(texts), trainers.WordLevelTrainer(special_tokens=specials))
    in_template = [token for token in template.split() if token != "$A"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, tokenizer.token_to_id(token)) for token in in_template])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles).save_pretrained(folder)
    return folder


def vocab_size(folder: str) -> int:
    return Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).get_vocab_size()


def metaclip2_config(folder: str, layout: str, vocab: int) -> dict:
    """The shape of open_clip's MetaCLIP 2 worldwide config of ``layout`` (its text_cfg keys, 77 tokens, 'eos'
    pooling at the layout's end id) shrunk to tiny-clip's widths, tokenizing with the folder's tokenizer."""
    *_, eos_id, worldwide = LAYOUTS[layout]
    cfg = deepcopy(open_clip.get_model_config("tiny-clip"))
    text = dict(open_clip.get_model_config(worldwide)["text_cfg"])
    assert (text["pool_type"], text["eos_id"], text["context_length"]) == ("eos", eos_id, 77)
    text.update(hf_tokenizer_name=folder, vocab_size=vocab, width=cfg["text_cfg"]["width"],
                heads=cfg["text_cfg"]["heads"], layers=cfg["text_cfg"]["layers"])
    cfg["text_cfg"] = text
    return cfg


def register_metaclip2(name: str, folder: str, layout: str, vocab: int) -> Tuple[str, str]:
    """Register the 77-token teacher config ``name`` and its 248-token RoPE student; (teacher, student) names."""
    register_model_config(name, metaclip2_config(folder, layout, vocab))
    return name, register_variant(name, "rope", 248)


def unregister(*names: str) -> None:
    for name in names:
        open_clip.factory._MODEL_CONFIGS.pop(name, None)
        open_clip.pretrained._PRETRAINED.pop(name, None)
