"""SDXL conditioning from long text towers, on a tiny randomly initialised SDXL pipeline built here (no download).

The reference for the four tensors is diffusers' own ``StableDiffusionXLPipeline.encode_prompt`` run on the same
towers exported to transformers; the behavioural check is that words past token 77 reach the UNet only through
a long encoder.
"""
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import (AutoModelForTextEncoding, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer)

from open_clip_ext.export import export_clip, export_relpos_text_model
from open_clip_ext.export.diffusion import SDXLPromptEncoder, pad_after_eot
from support.export_fixtures import LONGCLIP, ROPE, STOCK, make_model, max_diff, stretched_stock, words

# diffusers' Euler scheduler calls np.array on a tensor the NumPy 2 way it warns about (not this package's code)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
WIDTH, EMBED, TIME_DIM = 64, 64, 8
# ~100 shared tokens, then different endings: identical for a 77-token encoder, different for a 248-token one
SHARED = words(100)
PROMPTS = [SHARED + " beside a blue sphere", SHARED + " under a green lamp"]


@pytest.fixture(scope="module")
def pipe():
    """SDXL's architecture at toy size: UNet with text_time added conditioning, 2-level VAE, Euler scheduler."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * WIDTH, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1),
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=EMBED + 6 * TIME_DIM, norm_num_groups=8).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16).eval()
    return StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=EulerDiscreteScheduler(),
                                     add_watermarker=False)


@pytest.fixture(scope="module")
def towers():
    stock = make_model(STOCK, seed=1)
    return {"stock": stock, "stretched": stretched_stock(stock), "longclip": make_model(LONGCLIP, seed=2),
            "rope": make_model(ROPE, seed=3)}


def denoise_once(pipe, conditioning):
    """One guided Euler step at 16x16 pixels (8x8 latents) from fixed noise; returns the latents."""
    return pipe(**conditioning, num_inference_steps=1, height=16, width=16, guidance_scale=5.0,
                output_type="latent", generator=torch.Generator().manual_seed(0)).images


@pytest.mark.parametrize("slot_l", ["longclip", "rope"])
def test_words_past_token_77_reach_the_unet_only_through_a_long_encoder(pipe, towers, slot_l):
    long_encoder = SDXLPromptEncoder(towers[slot_l], towers["stretched"])
    conditioning = [long_encoder(p, negative_prompt="blurry") for p in PROMPTS]
    assert conditioning[0]["prompt_embeds"].shape == (1, 248, 2 * WIDTH)
    first, second = (denoise_once(pipe, c) for c in conditioning)
    assert first.shape == (1, 4, 8, 8) and torch.isfinite(first).all()
    assert max_diff(first, second) > 1e-4

    short_encoder = SDXLPromptEncoder(towers["stock"], towers["stock"])
    first, second = (denoise_once(pipe, short_encoder(p)) for p in PROMPTS)
    assert torch.equal(first, second)


@pytest.mark.parametrize("slot_l", ["longclip", "rope"])
def test_conditioning_equals_diffusers_encode_prompt_on_exported_encoders(pipe, towers, slot_l, tmp_path):
    """diffusers' encode_prompt with the same towers as transformers models (tokenizers padding like SDXL's:
    <|endoftext|> for the first, "!" for the second) gives the same four tensors."""
    dir_l, dir_g = tmp_path / "l", tmp_path / "g"
    if slot_l == "rope":
        export_relpos_text_model(towers[slot_l], dir_l, vision=False)
        text_encoder = AutoModelForTextEncoding.from_pretrained(str(dir_l)).eval()
    else:
        export_clip(towers[slot_l], dir_l)
        text_encoder = CLIPTextModel.from_pretrained(str(dir_l)).eval()
    export_clip(towers["stretched"], dir_g, pad_token="!")
    reference = StableDiffusionXLPipeline(
        vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler, add_watermarker=False,
        text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(str(dir_l)),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(str(dir_g)).eval(),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(dir_g)))
    with torch.no_grad():
        expected = reference.encode_prompt(PROMPTS, device=torch.device("cpu"), negative_prompt="blurry, dark")
    ours = SDXLPromptEncoder(towers[slot_l], towers["stretched"])(PROMPTS, negative_prompt="blurry, dark")
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    for name, value in zip(names, expected):
        assert max_diff(ours[name], value) < 1e-5, name


def test_missing_negative_prompt_gives_zeros_like_sdxl_base(towers):
    conditioning = SDXLPromptEncoder(towers["longclip"], towers["stretched"])(["a cat", "a dog"])
    assert not conditioning["negative_prompt_embeds"].any() and not conditioning["negative_pooled_prompt_embeds"].any()
    assert conditioning["pooled_prompt_embeds"].shape == (2, EMBED)


def test_towers_of_different_lengths_are_refused_with_the_stretch_named(towers):
    with pytest.raises(ValueError, match="register_variant\\('ViT-bigG-14', 'longclip', 248\\)"):
        SDXLPromptEncoder(towers["longclip"], towers["stock"])


def test_pad_after_eot():
    ids = torch.tensor([[49406, 5, 49407, 0, 0], [49406, 5, 6, 7, 49407]])
    assert pad_after_eot(ids, 49407).tolist() == [[49406, 5, 49407, 49407, 49407], [49406, 5, 6, 7, 49407]]
