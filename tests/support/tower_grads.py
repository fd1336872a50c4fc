"""Features and parameter gradients of a text tower under a fixed linear loss, for comparing two code paths."""
import torch


def features_and_grads(text_tower, ids, weight=0.1):
    """(features, {parameter name: gradient}) after backward of sum(features * w), w evenly spaced in
    [-weight, weight]; a small ``weight`` keeps gradients of order 1 (repeated tokens sum into one embedding)."""
    text_tower.zero_grad(set_to_none=True)
    out = text_tower(ids)
    (out * torch.linspace(-weight, weight, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in text_tower.named_parameters() if p.grad is not None}
