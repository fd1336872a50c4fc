"""Base weights into a long-context variant built at another image size (``force_image_size``, stage 2's
``--force-image-size``): the image positions are resized as stock open_clip resizes them for the base model."""
import open_clip
import pytest
import torch

import open_clip_ext  # noqa: F401  (registers the tiny configs and the loader)


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("weights") / "tiny-clip.pt"
    torch.save({"state_dict": open_clip.create_model("tiny-clip").state_dict()}, path)
    return str(path)


@pytest.mark.parametrize("variant", ["tiny-clip-rope-248", "tiny-clip-cope-248", "tiny-clip-longclip-248"])
def test_image_positions_are_resized_as_stock_open_clip_resizes_them(base_weights, variant):
    stock = open_clip.create_model("tiny-clip", pretrained=base_weights, force_image_size=48)
    long = open_clip.create_model(variant, pretrained=base_weights, force_image_size=48)
    saved = torch.load(base_weights, weights_only=True)["state_dict"]["visual.positional_embedding"]
    assert saved.shape[0] == 1 + 4 * 4 and long.visual.positional_embedding.shape[0] == 1 + 6 * 6
    assert torch.equal(long.visual.positional_embedding, stock.visual.positional_embedding)
    for name, tensor in stock.visual.state_dict().items():  # the rest of the image tower as saved
        assert torch.equal(long.visual.state_dict()[name], tensor), name
    assert long.encode_image(torch.rand(1, 3, 48, 48)).shape == (1, 64)
