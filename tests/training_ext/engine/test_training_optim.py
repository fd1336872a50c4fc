"""The optimizer: open_clip_train's weight-decay groups, frozen towers left out, fused kernel = reference update."""
import argparse

import open_clip
import torch

import support.training_helpers  # noqa: F401  (registers the tiny configs)
from training_ext.stages.distill import freeze_all_but_text
from training_ext.engine.optim import create_optimizer


def _args(eps=1e-6):
    return argparse.Namespace(opt="adamw", lr=1e-3, wd=0.1, beta1=0.9, beta2=0.98, eps=eps, momentum=None)


def test_groups_follow_open_clip_train_and_skip_frozen_parameters():
    model = open_clip.create_model("tiny-clip-rope-248")
    freeze_all_but_text(model)
    optimizer = create_optimizer(model, _args())
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay = ({names[id(p)] for p in group["params"]} for group in optimizer.param_groups)
    assert optimizer.defaults.get("fused") or optimizer.defaults.get("foreach")
    assert optimizer.param_groups[0]["weight_decay"] == 0 and optimizer.param_groups[1]["weight_decay"] == 0.1
    assert all(n.startswith("text.") for n in no_decay | decay)  # vision tower and logit scale are frozen
    assert "text.ln_final.weight" in no_decay and "text.transformer.resblocks.0.attn.in_proj_bias" in no_decay
    assert "text.token_embedding.weight" in decay and "text.text_projection" in decay
    assert len(no_decay | decay) == sum(1 for _, p in model.named_parameters() if p.requires_grad)


def test_fused_kernel_gives_the_reference_update():
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-rope-248")
    reference = open_clip.create_model("tiny-clip-rope-248")
    reference.load_state_dict(model.state_dict())
    # eps 1e-3: Adam maps rounding noise in gradients that are zero in exact arithmetic (the key bias) to updates
    # of ~lr * noise / (|noise| + eps); a large eps keeps that far below the tolerance
    ours = create_optimizer(model, _args(eps=1e-3))
    name_of = {id(p): n for n, p in model.named_parameters()}
    reference_params = dict(reference.named_parameters())
    plain = torch.optim.AdamW(
        [{"params": [reference_params[name_of[id(p)]] for p in group["params"]],
          "weight_decay": group["weight_decay"]} for group in ours.param_groups],
        lr=1e-3, betas=(0.9, 0.98), eps=1e-3, foreach=False, fused=False)
    ids = open_clip.get_tokenizer("tiny-clip-rope-248")(["a cat", "two dogs on a red sofa"])
    images = torch.rand(2, 3, 32, 32)
    for _ in range(3):
        for net, optimizer in ((model, ours), (reference, plain)):
            optimizer.zero_grad()
            image, text = net.encode_image(images, normalize=True), net.encode_text(ids, normalize=True)
            (net.logit_scale.exp() * image @ text.t()).logsumexp(1).mean().backward()
            optimizer.step()
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
