"""Independent, deliberately naive re-implementations of the RoPE and CoPE text forwards.

Written from the definitions in docs/text_towers.md (TULIP arXiv 2410.10034, CoPE arXiv 2405.18719) with explicit loops and complex numbers, sharing no code
with open_clip_ext, so the package's vectorised towers can be checked against them.
"""
import math

import torch
import torch.nn.functional as F


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x, quick):
    return x * torch.sigmoid(1.702 * x) if quick else 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def rope_rotate(vec, position, theta):
    """Rotate one head vector: pairs (2i, 2i+1) as complex numbers times exp(i * position * theta^(-2i/d))."""
    d = vec.shape[0]
    out = torch.empty_like(vec)
    for i in range(d // 2):
        z = complex(vec[2 * i].item(), vec[2 * i + 1].item())
        z = z * complex(math.cos(position * theta ** (-2 * i / d)), math.sin(position * theta ** (-2 * i / d)))
        out[2 * i], out[2 * i + 1] = z.real, z.imag
    return out


def rope_head_attention(q, k, v, theta):
    L, d = q.shape
    qr = torch.stack([rope_rotate(q[t], t, theta) for t in range(L)])
    kr = torch.stack([rope_rotate(k[t], t, theta) for t in range(L)])
    out = torch.zeros_like(v)
    for i in range(L):
        scores = torch.tensor([float(qr[i] @ kr[j]) / math.sqrt(d) for j in range(i + 1)], dtype=q.dtype)
        out[i] = (torch.softmax(scores, 0)[:, None] * v[: i + 1]).sum(0)
    return out


def cope_head_attention(q, k, v, pos_emb, q_ln, k_ln, eps=1e-5):
    """TULIP's CoPE choices: per-head LayerNorm on q and k, logits scaled by 1/d, table read with q/sqrt(d)."""
    L, d = q.shape
    q = layer_norm(q, *q_ln, eps) / math.sqrt(d)
    k = layer_norm(k, *k_ln, eps)
    npos = pos_emb.shape[-1]
    out = torch.zeros_like(v)
    for i in range(L):
        logits = torch.tensor([float(q[i] @ k[j]) / math.sqrt(d) for j in range(i + 1)], dtype=q.dtype)
        gates = torch.sigmoid(logits)
        table = q[i] @ pos_emb  # logit of each integer position
        for j in range(i + 1):
            p = min(float(gates[j:].sum()), npos - 1)
            lo, hi = math.floor(p), math.ceil(p)
            logits[j] = logits[j] + table[lo] * (1 - (p - lo)) + table[hi] * (p - lo)
        out[i] = (torch.softmax(logits, 0)[:, None] * v[: i + 1]).sum(0)
    return out


def text_forward(state, ids, heads, position, theta=10000.0, quick_gelu=False):
    """Encode one caption (1-D ids) from a CustomTextCLIP-style state dict (keys 'text.*')."""
    s = {k[len("text."):]: v.double() for k, v in state.items() if k.startswith("text.")}
    eot = int(ids.argmax())
    n = eot + 1  # causal: tokens after EOT cannot change the EOT feature
    x = s["token_embedding.weight"][ids[:n]]
    width = x.shape[1]
    d = width // heads
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in s:
        p = f"transformer.resblocks.{layer}."
        h = layer_norm(x, s[p + "ln_1.weight"], s[p + "ln_1.bias"])
        qkv = h @ s[p + "attn.in_proj_weight"].T + s[p + "attn.in_proj_bias"]
        q, k, v = qkv[:, :width], qkv[:, width:2 * width], qkv[:, 2 * width:]
        heads_out = []
        for hd in range(heads):
            cols = slice(hd * d, (hd + 1) * d)
            if position == "rope":
                heads_out.append(rope_head_attention(q[:, cols], k[:, cols], v[:, cols], theta))
            else:
                heads_out.append(cope_head_attention(
                    q[:, cols], k[:, cols], v[:, cols], s[p + "attn.cope.pos_emb"][0],
                    (s[p + "attn.q_ln.weight"], s[p + "attn.q_ln.bias"]),
                    (s[p + "attn.k_ln.weight"], s[p + "attn.k_ln.bias"])))
        attn = torch.cat(heads_out, dim=1) @ s[p + "attn.out_proj.weight"].T + s[p + "attn.out_proj.bias"]
        x = x + attn
        h = layer_norm(x, s[p + "ln_2.weight"], s[p + "ln_2.bias"])
        h = gelu(h @ s[p + "mlp.c_fc.weight"].T + s[p + "mlp.c_fc.bias"], quick_gelu)
        x = x + h @ s[p + "mlp.c_proj.weight"].T + s[p + "mlp.c_proj.bias"]
        layer += 1
    x = layer_norm(x, s["ln_final.weight"], s["ln_final.bias"])
    return x[eot] @ s["text_projection"]


def randomize_(model, scale=0.5):
    """Give every parameter (LayerNorms and CoPE tables included) non-trivial random values."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or "_ln.weight" in name \
                    or name.endswith("ln_final.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) / max(1, p.shape[-1] if p.dim() else 1) ** 0.5)
    return model
