"""SDXL conditioning from open_clip text towers, including 248-token ones.

diffusers' ``StableDiffusionXLPipeline.encode_prompt`` (pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py)
builds, per prompt:
- ``prompt_embeds`` (batch, seq, 768 + 1280): the penultimate hidden states (``hidden_states[-2]``: the output of
  the second-to-last block, before the final LayerNorm) of the CLIP ViT-L text encoder and of the OpenCLIP ViT-bigG
  one, concatenated along channels;
- ``pooled_prompt_embeds`` (batch, 1280): the bigG encoder's projected sentence feature (``text_embeds``);
- the same two for the negative prompt, or zeros when there is none (``force_zeros_for_empty_prompt``, SDXL
  base's setting).
``SDXLPromptEncoder`` computes these four tensors from open_clip models directly, so the CLIP-L slot can be a long
tower (Long-CLIP, RoPE, CoPE, uniform) and the pipeline is called with the tensors instead of prompts. The
channel-wise concatenation needs both sequences equally long: a 77-token bigG must be stretched to the long tower's
context (Long-CLIP's rule, ``register_variant('ViT-bigG-14', 'longclip', 248)``), not padded.

Token ids: two behaviours, ``match=``.
- ``"sdxl"`` (default): as SDXL was trained. Stability's training code (generative-models, commit 0ad7de9,
  sgm/modules/encoders/modules.py) tokenizes the bigG slot with ``open_clip.tokenize`` (``FrozenOpenCLIPEmbedder2``):
  open_clip's cleaning (ftfy, HTML unescaping, lower case), a literal ``!`` is id 256, padding is id 0. The first
  slot's ``FrozenCLIPEmbedder`` pads with ``<|endoftext|>`` (openai/clip-vit-large-patch14's pad token). Both slots
  here get open_clip's cleaning: the bigG because SDXL was trained so, the first slot because its long tower
  (Long-CLIP, RoPE, CoPE) was trained on open_clip's cleaned tokens.
- ``"diffusers"``: what ``StableDiffusionXLPipeline.encode_prompt`` computes with SDXL's own Hub tokenizers (diffusers
  0.42.1, src/diffusers/pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py; the same code at commit
  58eb52c): transformers' tokenizers do not clean the text (only NFC, whitespace collapsing, lower case); the second
  tokenizer's pad token is ``!``, which transformers also matches inside the text, so every literal ``!`` becomes id 0
  (diffusers issue #4153, closed as stale); ``clip_skip`` picks the layer of the prompt only, while negative prompts
  are always read at ``hidden_states[-2]`` (PRs #13796 and #13973 proposed applying it to both; neither was
  merged). The default applies ``clip_skip`` to both, so that classifier-free guidance contrasts features of one
  layer; SDXL itself was trained without ``clip_skip``.
The two give equal tensors exactly when no prompt or negative prompt contains ``!``, open_clip's cleaning leaves every
one unchanged (beyond whitespace and case), and ``clip_skip`` is unset or there is no negative prompt
(tests/open_clip_ext/export/test_sdxl_tokenization.py, one test per difference).
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from open_clip.tokenizer import SimpleTokenizer

from .tokenizer import EOT, clip_tokenizer
from .transformers_clip import CLIP_EOT_ID, text_parts

SDXL_PAD_IDS = (CLIP_EOT_ID, 0)  # stabilityai/stable-diffusion-xl-base-1.0 tokenizer / tokenizer_2 pad tokens
SDXL_PAD_TOKENS = (EOT, "!")     # the same, as the tokenizers' pad_token strings
MATCHES = ("sdxl", "diffusers")


def context_length(model) -> int:
    return text_parts(model)[0].context_length


def pad_after_eot(ids: torch.Tensor, pad_id: int, eot_id: int = CLIP_EOT_ID) -> torch.Tensor:
    """(batch, seq) ids with every position after the first end-of-text token set to ``pad_id`` (open_clip's
    tokenizer pads with 0). Rows without an end-of-text token are returned unchanged."""
    is_eot = ids == eot_id
    after_first = (is_eot.cumsum(dim=-1) - is_eot.long()) > 0
    return ids.masked_fill(after_first, pad_id)


def penultimate_and_pooled(model, ids: torch.Tensor, clip_skip: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hidden, pooled) of an open_clip CLIP's text tower for token ids (batch, seq):
    hidden (batch, seq, width) = output of block ``layers - 2 - clip_skip`` (transformers' ``hidden_states[-2 -
    clip_skip]``), pooled (batch, embed_dim) = projected, unnormalised text features.

    Raises:
        ValueError: a tower with too few blocks for the requested layer.
    """
    blocks = text_parts(model)[1]
    index = len(blocks.resblocks) - 2 - clip_skip
    if index < 0:
        raise ValueError(f"text tower has {len(blocks.resblocks)} blocks; hidden_states[-{2 + clip_skip}] would be "
                         f"the token embeddings, which open_clip's intermediates do not return")
    out = model.forward_intermediates(text=ids, text_indices=[index], normalize=False)
    return out["text_intermediates"][0], out["text_features"]


class SDXLPromptEncoder:
    """Prompts -> keyword arguments of ``StableDiffusionXLPipeline.__call__`` from two open_clip models.

    clip_l: the model for SDXL's first encoder slot (768-wide hidden states for the real SDXL: a ViT-L/14 text
        tower, e.g. Long-CLIP-L or a RoPE / CoPE ViT-L-14-*-248); clip_g: the second slot (ViT-bigG/14, 1280 wide,
        stock or stretched). Both must have the same context length and CLIP's vocabulary. Models are used as they
        are (eval mode, device and dtype are the caller's).
    match: ``"sdxl"`` (default: token ids as SDXL was trained, open_clip's cleaning, ``!`` kept as a character,
        ``clip_skip`` for prompts and negative prompts alike) or ``"diffusers"`` (the tensors of diffusers'
        ``encode_prompt`` with SDXL's tokenizers: raw text, ``!`` becomes the pad id 0 in the second slot,
        ``clip_skip`` for the prompts only). The module docstring gives the sources and when the two agree.
    tokenizer: ``match="sdxl"`` only: an open_clip tokenizer (default: ``SimpleTokenizer`` at the common context).
    pad_ids: ``match="sdxl"`` only: pad ids written after the end-of-text token for (clip_l, clip_g) inputs; SDXL's
        by default.
    clip_skip: as diffusers' ``clip_skip`` (0 or None: the penultimate layer, ``hidden_states[-2]``).

    Raises:
        ValueError: the two towers have different context lengths (with how to stretch the shorter one); an unknown
            ``match``; ``tokenizer`` / ``pad_ids`` with ``match="diffusers"`` (its tokenizers are SDXL's).
    """

    def __init__(self, clip_l, clip_g, tokenizer=None, pad_ids: Tuple[int, int] = SDXL_PAD_IDS,
                 clip_skip: Optional[int] = None, match: str = "sdxl"):
        lengths = context_length(clip_l), context_length(clip_g)
        if lengths[0] != lengths[1]:
            raise ValueError(
                f"SDXL concatenates the two encoders' hidden states along channels, so both need one sequence "
                f"length; got {lengths[0]} (clip_l) and {lengths[1]} (clip_g). Stretch the shorter tower "
                f"(do not pad): name = open_clip_ext.register_variant('ViT-bigG-14', 'longclip', {max(lengths)}); "
                f"open_clip.create_model(name, pretrained='laion2b_s39b_b160k')")
        if match not in MATCHES:
            raise ValueError(f"match={match!r}: choose 'sdxl' (token ids as SDXL was trained) or 'diffusers' "
                             f"(diffusers' encode_prompt with SDXL's tokenizers)")
        if match == "diffusers" and (tokenizer is not None or tuple(pad_ids) != SDXL_PAD_IDS):
            raise ValueError("match='diffusers' tokenizes with SDXL's own tokenizers (pad tokens <|endoftext|> and "
                             "'!'); drop tokenizer= / pad_ids=, or use match='sdxl' to choose them")
        self.models = (clip_l, clip_g)
        self.context_length = lengths[0]
        self.match = match
        self.clip_skip = clip_skip or 0
        if match == "diffusers":
            # transformers tokenizers with open_clip's vocabulary (= SDXL's tokenizer / tokenizer_2 files) and pads
            self.hf_tokenizers = tuple(clip_tokenizer(self.context_length, pad) for pad in SDXL_PAD_TOKENS)
        else:
            self.tokenizer = tokenizer or SimpleTokenizer(context_length=self.context_length)
            self.pad_ids = pad_ids

    def token_ids(self, prompts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids for clip_l, ids for clip_g), each (batch, context_length) int64 on the CPU, by ``match``'s rules."""
        prompts = list(prompts)
        if self.match == "diffusers":
            return tuple(tokenizer(prompts, padding="max_length", max_length=self.context_length, truncation=True,
                                   return_tensors="pt")["input_ids"] for tokenizer in self.hf_tokenizers)
        ids = self.tokenizer(prompts, context_length=self.context_length)
        return tuple(pad_after_eot(ids, pad_id) for pad_id in self.pad_ids)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], negative: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (batch, context, width_l + width_g), pooled_prompt_embeds (batch, embed_g)), in the
        models' dtype, on clip_l's device (pooled: clip_g's). negative: the prompts are negative prompts (with
        ``match="diffusers"`` they are read at ``hidden_states[-2]`` whatever ``clip_skip`` is, as diffusers does)."""
        clip_skip = 0 if negative and self.match == "diffusers" else self.clip_skip
        outputs = []
        for model, ids in zip(self.models, self.token_ids(prompts)):
            device = next(model.parameters()).device
            outputs.append(penultimate_and_pooled(model, ids.to(device), clip_skip))
        (hidden_l, _), (hidden_g, pooled_g) = outputs  # SDXL takes the pooled feature of its second encoder only
        return torch.cat([hidden_l, hidden_g.to(hidden_l.device)], dim=-1), pooled_g

    def __call__(self, prompt: Union[str, Sequence[str]], negative_prompt: Union[None, str, Sequence[str]] = None,
                 dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
        """``prompt_embeds``, ``pooled_prompt_embeds``, ``negative_prompt_embeds``,
        ``negative_pooled_prompt_embeds`` for ``pipe(**encoder(prompt), ...)``.

        negative_prompt: None gives zeros (SDXL base's ``force_zeros_for_empty_prompt``); a string is used for
            every prompt; a list must match the prompts. dtype: cast all four (the pipeline's UNet dtype).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds, pooled = self.encode(prompts)
        if negative_prompt is None:
            negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negatives) != len(prompts):
                raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
            negative, negative_pooled = self.encode(negatives, negative=True)
        out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": negative,
               "negative_pooled_prompt_embeds": negative_pooled}
        return {k: v.to(dtype) if dtype is not None else v for k, v in out.items()}
