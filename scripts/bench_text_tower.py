"""Forward+backward step time and memory of the RoPE and CoPE text towers against open_clip's stock tower.

All three towers have the same width/heads/layers and context and read the same full-length batch; they are
timed in one run, interleaved round by round so machine noise hits them alike, and reported as ratios to the
stock tower (learned absolute positions, nn.MultiheadAttention). Memory is the bytes of tensors autograd saves
for backward (device independent), plus the CUDA peak when run on a GPU.

    python scripts/bench_text_tower.py                      # ViT-B-16 text size, CPU
    python scripts/bench_text_tower.py --device cuda --batch-size 128 --precision amp_bf16
Targets: RoPE within 5% of stock, CoPE within 40%.
"""
import argparse
import contextlib
import statistics
import time

import open_clip
import torch
from open_clip.transformer import TextTransformer

import open_clip_ext  # noqa: F401
from open_clip_ext.towers import build_relpos_text_tower


def build_towers(base: str, context_length: int):
    text_cfg = dict(open_clip.get_model_config(base)["text_cfg"], context_length=context_length)
    embed_dim = open_clip.get_model_config(base)["embed_dim"]
    stock = TextTransformer(context_length=context_length, vocab_size=text_cfg.get("vocab_size", 49408),
                            width=text_cfg["width"], heads=text_cfg["heads"], layers=text_cfg["layers"],
                            output_dim=embed_dim)
    towers = {"stock": stock}
    for position in ("rope", "cope"):
        cfg = open_clip_ext.derive_config(base, position, context_length)["text_cfg"]
        towers[position] = build_relpos_text_tower(embed_dim, cfg)
    return towers


def full_length_batch(batch_size: int, context_length: int) -> torch.Tensor:
    ids = torch.randint(1, 49000, (batch_size, context_length))
    ids[:, -1] = open_clip_ext.EOT_TOKEN_ID
    return ids


def saved_activation_bytes(tower, ids, autocast) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        tower(ids).float().square().mean()
    return total


def step(tower, ids, autocast, device):
    tower.zero_grad(set_to_none=True)
    with autocast():
        loss = tower(ids).float().square().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()


def cuda_peak_bytes(tower, ids, autocast, device) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step(tower, ids, autocast, device)
    return torch.cuda.max_memory_allocated(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="ViT-B-16", help="stock open_clip config whose text size is used")
    parser.add_argument("--context-length", type=int, default=248)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each times every tower once)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp_bf16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    towers = {k: v.to(device).train() for k, v in build_towers(args.base, args.context_length).items()}
    ids = full_length_batch(args.batch_size, args.context_length).to(device)
    if args.precision == "amp_bf16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    for _ in range(args.warmup):
        for tower in towers.values():
            step(tower, ids, autocast, device)
    times = {k: [] for k in towers}
    for _ in range(args.rounds):
        for name, tower in towers.items():
            start = time.perf_counter()
            step(tower, ids, autocast, device)
            times[name].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    saved = {k: saved_activation_bytes(t, ids, autocast) for k, t in towers.items()}
    peaks = {k: cuda_peak_bytes(t, ids, autocast, device) for k, t in towers.items()} if device.type == "cuda" \
        else None

    print(f"text tower of {args.base}: context {args.context_length}, batch {args.batch_size}, "
          f"{args.precision} on {device} ({torch.get_num_threads()} threads), median of {args.rounds} rounds")
    header = f"{'tower':<6} {'step ms':>9} {'time/stock':>11} {'saved MiB':>10} {'saved/stock':>12}"
    if peaks:
        header += f" {'peak MiB':>9} {'peak/stock':>11}"
    print(header)
    for name in towers:
        line = (f"{name:<6} {medians[name] * 1e3:>9.1f} {medians[name] / medians['stock']:>11.3f} "
                f"{saved[name] / 2**20:>10.1f} {saved[name] / saved['stock']:>12.3f}")
        if peaks:
            line += f" {peaks[name] / 2**20:>9.1f} {peaks[name] / peaks['stock']:>11.3f}"
        print(line)
    targets = {"rope": 1.05, "cope": 1.40}
    for name, limit in targets.items():
        ratio = medians[name] / medians["stock"]
        print(f"{name}: {ratio:.3f}x stock step time (target <= {limit:.2f}x): {'met' if ratio <= limit else 'MISSED'}")


if __name__ == "__main__":
    main()
