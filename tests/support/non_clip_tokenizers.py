"""Tiny local tokenizers in MetaCLIP 2's layouts and tiny MetaCLIP-2-like model configs (nothing is downloaded).

MetaCLIP 2 worldwide (open_clip's ``ViT-*-worldwide*`` configs) tokenizes with XLM-V (``<s>`` = 0, ``<pad>`` = 1,
``</s>`` = 2, ``<unk>`` = 3; a caption is ``<s> ... </s>``) or mT5 (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, no
start token; ``... </s>``) through open_clip's HFTokenizer, and pools its text tower at ``eos_id``. Here a word-level
``tokenizers`` model trained on the test's own texts takes each layout, saved as a transformers tokenizer folder
that a config's ``hf_tokenizer_name`` points at.

SigLIP and SigLIP 2 (bidirectional text towers, 'last' pooling, 64 tokens) tokenize with sentencepiece models:
SigLIP's T5-style English vocabulary (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2; ``... </s>``, padded with ``</s>``,
id 1, as big_vision's ``pad_value=1``) and SigLIP 2's Gemma vocabulary (``<pad>`` = 0, ``<eos>`` = 1, ``<bos>`` = 2,
``<unk>`` = 3; ``... <eos>`` without ``<bos>``, padded with 0, as open_clip's ``SigLipTokenizer`` sets Gemma up).
Here a unigram model (sentencepiece's algorithm, ``tokenizers``' ``Metaspace`` pieces) trained on the test's texts
takes each layout; real use needs the released tokenizer files.
"""
import os
from copy import deepcopy
from typing import Iterable, Tuple

import open_clip
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from open_clip_ext.configs import register_model_config, register_variant

# layout: (special tokens in id order, post-processor template, transformers special-token roles, the tower's eos_id,
# the stock config whose text_cfg keys (tokenizer_kwargs, pooling, ...) it copies)
LAYOUTS = {
    "xlmv": (["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>",
             {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, 2,
             "ViT-H-14-worldwide"),
    "mt5": (["<pad>", "</s>", "<unk>"], "$A </s>",
            {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}, 1, "ViT-L-14-worldwide"),
    "siglip": (["<pad>", "</s>", "<unk>"], "$A </s>",
               {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}, 1, "ViT-B-16-SigLIP"),
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>"], "$A <eos>",
              {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}, 1,
              "ViT-B-16-SigLIP2"),
}
SENTENCEPIECE_LAYOUTS = ("siglip", "gemma")


def save_tokenizer(folder: str, layout: str, texts: Iterable[str]) -> str:
    """A tokenizer in ``layout`` trained on ``texts``, saved to ``folder``: word-level (the vocabulary is the words
    of ``texts``), or for SENTENCEPIECE_LAYOUTS a unigram model of sentencepiece pieces (at most 200)."""
    specials, template, roles, _, _ = LAYOUTS[layout]
    if layout in SENTENCEPIECE_LAYOUTS:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token="<unk>")
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=specials)
    tokenizer.train_from_iterator(list(texts), trainer)
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


def siglip_config(folder: str, layout: str, vocab: int) -> dict:
    """The shape of open_clip's SigLIP (``layout`` 'siglip') or SigLIP 2 ('gemma') config (its text_cfg keys:
    bidirectional, 'last' pooling, 64 tokens; its logit bias) shrunk to tiny-clip's widths and image tower,
    tokenizing with the folder's tokenizer."""
    *_, reference = LAYOUTS[layout]
    stock = open_clip.get_model_config(reference)
    cfg = deepcopy(open_clip.get_model_config("tiny-clip"))
    text = dict(stock["text_cfg"])
    assert (text["pool_type"], text["no_causal_mask"], text["context_length"]) == ("last", True, 64)
    text.update(hf_tokenizer_name=folder, vocab_size=vocab, width=cfg["text_cfg"]["width"],
                heads=cfg["text_cfg"]["heads"], layers=cfg["text_cfg"]["layers"])
    cfg.update(text_cfg=text, custom_text=True, init_logit_bias=stock["init_logit_bias"])
    return cfg


def register_metaclip2(name: str, folder: str, layout: str, vocab: int) -> Tuple[str, str]:
    """Register the 77-token teacher config ``name`` and its 248-token RoPE student; (teacher, student) names."""
    register_model_config(name, metaclip2_config(folder, layout, vocab))
    return name, register_variant(name, "rope", 248)


def unregister(*names: str) -> None:
    for name in names:
        open_clip.factory._MODEL_CONFIGS.pop(name, None)
        open_clip.pretrained._PRETRAINED.pop(name, None)
