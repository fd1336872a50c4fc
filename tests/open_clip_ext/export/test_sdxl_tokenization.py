"""SDXLPromptEncoder's two behaviours against their references, one test per way they differ from diffusers:
a literal "!", text that open_clip's cleaning changes, and ``clip_skip`` with a negative prompt.

References, both run on the same tiny towers exported to transformers (3 text blocks, so that ``clip_skip=1`` has a
layer to read):
- ``match="diffusers"``: diffusers' own ``StableDiffusionXLPipeline.encode_prompt`` with the exported tokenizers,
  which are SDXL's (open_clip's BPE vocabulary; pad tokens ``<|endoftext|>`` and ``!``, as
  stabilityai/stable-diffusion-xl-base-1.0's tokenizer / tokenizer_2);
- ``match="sdxl"``: SDXL's training tokenization, as Stability's generative-models computes it
  (sgm/modules/encoders/modules.py at 0ad7de9): the bigG slot takes ``open_clip.tokenize`` ids (cleaned, padded with
  0); the first slot a transformers CLIP tokenizer padding with ``<|endoftext|>``, given open_clip's cleaned text
  here (the long tower's training text). The exported transformers encoders turn the ids into hidden states.
"""
import open_clip
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from open_clip_ext.export import clean_caption, export_clip
from open_clip_ext.export.diffusion import SDXLPromptEncoder
from support.export_fixtures import LONGCLIP, make_model, max_diff, words

CONTEXT = 248
EOT_ID = 49407
EXCLAMATION_ID = 256  # "!</w>" in open_clip's vocabulary; "!" (id 0) is SDXL's second pad token
TEXT_CFG = {**open_clip.get_model_config(LONGCLIP)["text_cfg"], "layers": 3}
NAMES = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
PLAIN = [words(30) + " beside a blue sphere", words(120, 3) + " under a green lamp"]
EXCLAIMED = ["a red cat!", words(90, 1) + " wow!! a dog, really!"]
NEEDS_CLEANING = ["it’s a cat &amp; a dog", "a ﬁne “curly” lamp, " + words(20, 2)]


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(clip_l, clip_g) open_clip towers and a diffusers pipeline whose text encoders are the same towers exported
    (no UNet, VAE or scheduler: encode_prompt does not use them)."""
    folder = tmp_path_factory.mktemp("sdxl")
    clip_l = make_model(LONGCLIP, seed=4, text_cfg=TEXT_CFG)
    clip_g = make_model(LONGCLIP, seed=5, text_cfg=TEXT_CFG)
    export_clip(clip_l, folder / "l")
    export_clip(clip_g, folder / "g", pad_token="!")  # as diffusers' SDXL tokenizer_2
    pipe = StableDiffusionXLPipeline(
        vae=None, unet=None, scheduler=None, add_watermarker=False,
        text_encoder=CLIPTextModel.from_pretrained(str(folder / "l")).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder / "l")),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(str(folder / "g")).eval(),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(folder / "g")))
    return clip_l, clip_g, pipe


def diffusers_tensors(pipe, prompts, negative_prompt=None, clip_skip=None):
    with torch.no_grad():
        values = pipe.encode_prompt(prompts, device=torch.device("cpu"), negative_prompt=negative_prompt,
                                    clip_skip=clip_skip)
    return dict(zip(NAMES, values))


def training_tensors(pipe, prompts, negative_prompt=None, clip_skip=0):
    """SDXL's training tokenization fed to the exported encoders, ``clip_skip`` applied to both prompt kinds."""
    def encode(texts):
        ids_l = pipe.tokenizer([clean_caption(t) for t in texts], padding="max_length", max_length=CONTEXT,
                               truncation=True, return_tensors="pt")["input_ids"]
        ids_g = open_clip.tokenize(texts, context_length=CONTEXT)
        with torch.no_grad():
            out_l = pipe.text_encoder(ids_l, output_hidden_states=True)
            out_g = pipe.text_encoder_2(ids_g, output_hidden_states=True)
        layer = -2 - clip_skip
        return torch.cat([out_l.hidden_states[layer], out_g.hidden_states[layer]], dim=-1), out_g.text_embeds

    embeds, pooled = encode(prompts)
    if negative_prompt is None:
        negative, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        negative, negative_pooled = encode([negative_prompt] * len(prompts))
    return dict(zip(NAMES, (embeds, negative, pooled, negative_pooled)))


def assert_equal_tensors(ours, reference, names=NAMES):
    for name in names:
        assert ours[name].shape == reference[name].shape, name
        assert max_diff(ours[name], reference[name]) < 1e-5, name


def test_exclamation_mark_is_a_character_as_sdxl_was_trained_and_the_pad_id_in_diffusers(sdxl):
    clip_l, clip_g, pipe = sdxl
    hf_ids = pipe.tokenizer_2(EXCLAIMED, padding="max_length", max_length=CONTEXT, truncation=True,
                              return_tensors="pt")["input_ids"]
    open_clip_ids = open_clip.tokenize(EXCLAIMED, context_length=CONTEXT)
    # as SDXL's training saw them: "!" is the character (256; "!!" is a token of its own), 0 only pads
    assert (open_clip_ids == EXCLAMATION_ID).sum() == 2
    assert all(0 not in row[:row.tolist().index(EOT_ID)] for row in open_clip_ids)
    # diffusers' tokenizer_2: every "!" character is the pad id 0, inside the text
    assert (hf_ids == EXCLAMATION_ID).sum() == 0
    assert [row[:row.tolist().index(EOT_ID)].tolist().count(0) for row in hf_ids] == [t.count("!") for t in EXCLAIMED]

    negative = "ugly!"
    diffusers_like = SDXLPromptEncoder(clip_l, clip_g, match="diffusers")
    assert torch.equal(diffusers_like.token_ids(EXCLAIMED)[1], hf_ids)
    assert_equal_tensors(diffusers_like(EXCLAIMED, negative_prompt=negative),
                         diffusers_tensors(pipe, EXCLAIMED, negative))

    ours = SDXLPromptEncoder(clip_l, clip_g)(EXCLAIMED, negative_prompt=negative)
    assert_equal_tensors(ours, training_tensors(pipe, EXCLAIMED, negative))
    assert max_diff(ours["prompt_embeds"], diffusers_tensors(pipe, EXCLAIMED, negative)["prompt_embeds"]) > 1e-3


def test_text_open_clip_cleans_is_cleaned_as_sdxl_was_trained_and_raw_in_diffusers(sdxl):
    clip_l, clip_g, pipe = sdxl
    assert all(clean_caption(t) != " ".join(t.lower().split()) for t in NEEDS_CLEANING)

    diffusers_like = SDXLPromptEncoder(clip_l, clip_g, match="diffusers")
    assert_equal_tensors(diffusers_like(NEEDS_CLEANING, negative_prompt="it’s &amp; dark"),
                         diffusers_tensors(pipe, NEEDS_CLEANING, "it’s &amp; dark"))

    ours = SDXLPromptEncoder(clip_l, clip_g)(NEEDS_CLEANING, negative_prompt="it’s &amp; dark")
    assert_equal_tensors(ours, training_tensors(pipe, NEEDS_CLEANING, "it’s &amp; dark"))
    theirs = diffusers_tensors(pipe, NEEDS_CLEANING, "it’s &amp; dark")
    for name in NAMES:  # the cleaning changes all four, the pooled features included
        assert max_diff(ours[name], theirs[name]) > 1e-3, name


def test_clip_skip_reaches_negative_prompts_here_and_not_in_diffusers(sdxl):
    clip_l, clip_g, pipe = sdxl
    negative = "blurry, dark"
    theirs = diffusers_tensors(pipe, PLAIN, negative, clip_skip=1)
    assert_equal_tensors(SDXLPromptEncoder(clip_l, clip_g, clip_skip=1, match="diffusers")(PLAIN, negative), theirs)

    ours = SDXLPromptEncoder(clip_l, clip_g, clip_skip=1)(PLAIN, negative_prompt=negative)
    assert_equal_tensors(ours, training_tensors(pipe, PLAIN, negative, clip_skip=1))
    # the prompts and both pooled features agree with diffusers; the negative hidden states come from another layer
    assert_equal_tensors(ours, theirs, ("prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"))
    assert max_diff(ours["negative_prompt_embeds"], theirs["negative_prompt_embeds"]) > 1e-3
    skipped = diffusers_tensors(pipe, [negative] * len(PLAIN), clip_skip=1)["prompt_embeds"]
    assert max_diff(ours["negative_prompt_embeds"], skipped) < 1e-5  # the negative read as a prompt would be

    # without a negative prompt (zeros, SDXL base) clip_skip gives diffusers' tensors in both behaviours
    assert_equal_tensors(SDXLPromptEncoder(clip_l, clip_g, clip_skip=1)(PLAIN),
                         diffusers_tensors(pipe, PLAIN, clip_skip=1))


def test_plain_prompts_give_diffusers_tensors_in_both_behaviours(sdxl):
    clip_l, clip_g, pipe = sdxl
    theirs = diffusers_tensors(pipe, PLAIN, "blurry, dark")
    for match in ("sdxl", "diffusers"):
        assert_equal_tensors(SDXLPromptEncoder(clip_l, clip_g, match=match)(PLAIN, negative_prompt="blurry, dark"),
                             theirs)


def test_bad_options_are_refused_with_the_fix(sdxl):
    clip_l, clip_g, _ = sdxl
    with pytest.raises(ValueError, match="choose 'sdxl'.*or 'diffusers'"):
        SDXLPromptEncoder(clip_l, clip_g, match="transformers")
    with pytest.raises(ValueError, match="drop tokenizer= / pad_ids=, or use match='sdxl'"):
        SDXLPromptEncoder(clip_l, clip_g, pad_ids=(0, 0), match="diffusers")
