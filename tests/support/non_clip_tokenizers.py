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
    # CLIPA's bert-base-uncased ([CLS] ... [SEP], the [SEP] stripped by its tokenizer_kwargs; 'last' pooling)
    "bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS] $A [SEP]",
             {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
              "mask_token": "[MASK]"}, None, "ViT-L-14-CLIPA"),
}
SENTENCEPIECE_LAYOUTS = ("siglip", "gemma")
METACLIP2_LAYOUTS = ("xlmv", "mt5")  # the tokenizers of MetaCLIP 2 worldwide configs (metaclip2_config)


def save_tokenizer(folder: str, layout: str, texts: Iterable[str]) -> str:
    """A tokenizer in ``layout`` trained on ``texts``, saved to ``folder``: word-level (the vocabulary is the words
    of ``texts``), or for SENTENCEPIECE_LAYOUTS a unigram model of sentencepiece pieces (at most 200)."""
    specials, template, roles, _, _ = LAYOUTS[layout]
    if layout in SENTENCEPIECE_LAYOUTS:
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=specials, unk_token=roles["unk_token"])
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=roles["unk_token"]))
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


# Hugging Face text towers (open_clip's text_cfg.hf_model_name): the transformers model type of each shipped
# hf_model_name, and the tokenizer layout above that has its special ids (XLM-R, RoBERTa and NLLB: <s> 0, <pad> 1,
# </s> 2, <unk> 3; mT5: <pad> 0, </s> 1, <unk> 2).
HF_TOWER_TYPES = (("mt5", "mt5"), ("xlm-roberta", "xlm-roberta"), ("roberta", "roberta"), ("nllb", "m2m_100"))
HF_TOWER_LAYOUT = {"mt5": "mt5", "xlm-roberta": "xlmv", "roberta": "xlmv", "m2m_100": "xlmv"}


def hf_model_type(hf_model_name: str) -> str:
    """The transformers model type of a shipped config's ``hf_model_name`` ('google/mt5-base' -> 'mt5')."""
    return next(kind for key, kind in HF_TOWER_TYPES if key in hf_model_name.split("/")[-1])


def save_tiny_hf_tower(folder: str, model_type: str, vocab: int, max_positions: int = 130, seed: int = 0) -> str:
    """A randomly initialised 1-layer 32-wide transformers model of ``model_type`` saved to ``folder`` (config and
    weights, which ``AutoConfig`` / ``AutoModel.from_pretrained(folder)`` read as they would a hub name). Special
    ids are the layout's (``HF_TOWER_LAYOUT``); ``max_positions`` is ``max_position_embeddings`` (not for mT5)."""
    import torch
    from transformers import AutoModel, M2M100Config, MT5Config, RobertaConfig, XLMRobertaConfig

    small = dict(vocab_size=vocab)
    if model_type == "mt5":
        config = MT5Config(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                           pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **small)
    elif model_type == "m2m_100":
        config = M2M100Config(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                              decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                              max_position_embeddings=max_positions, pad_token_id=1, bos_token_id=0,
                              eos_token_id=2, decoder_start_token_id=2, **small)
    else:
        config = {"xlm-roberta": XLMRobertaConfig, "roberta": RobertaConfig}[model_type](
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=max_positions, pad_token_id=1, bos_token_id=0, eos_token_id=2, **small)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def tiny_hf_clip_config(folder: str, stock_name: str) -> dict:
    """Open_clip's config ``stock_name`` (a Hugging Face text tower) with tiny-clip's image tower and embed_dim,
    its text tower (and tokenizer) read from ``folder`` (``save_tiny_hf_tower``, ``save_tokenizer``)."""
    cfg = deepcopy(open_clip.get_model_config(stock_name))
    tiny = open_clip.get_model_config("tiny-clip")
    cfg["embed_dim"], cfg["vision_cfg"] = tiny["embed_dim"], deepcopy(tiny["vision_cfg"])
    cfg["text_cfg"].update(hf_model_name=folder, hf_tokenizer_name=folder)
    return cfg
