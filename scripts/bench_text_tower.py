"""Step time, memory and encode throughput of the RoPE and CoPE text towers against open_clip's stock tower.

Rows (same width/heads/layers/context, same full-length batch):
  stock          open_clip's TextTransformer (learned absolute positions, nn.MultiheadAttention)
  rope           RoPE tower; its last block runs only at the pooled (end token) rows (the default)
  rope-full      RoPE tower with every row of the last block computed (``last_block_at_pooled_rows = False``)
  cope           CoPE tower, memory-lean CoPE attention as configured (``open_clip_ext.kernels``; the default: the
                 PyTorch op everywhere, the fused Triton kernels when OPEN_CLIP_EXT_COPE_IMPL=triton), pooled last block
  cope-torch     the same on the PyTorch op whatever the environment (``cope_impl = "torch"``)
  cope-triton    the same on the fused Triton kernels (``cope_impl = "triton"``; only on CUDA with Triton installed)
  cope-autograd  CoPE tower, op-by-op CoPE attention (``cope_impl = "autograd"``), pooled last block
With --compile every row is also run through ``torch.compile`` (suffix ``+c``). All rows are timed in one run,
interleaved round by round, the order rotating so no row always runs right after a particular other (cold caches),
and reported as ratios to stock.

Columns: median forward+backward step time; saved: bytes of tensors autograd saves for backward (device
independent; n/a where saved-tensor hooks cannot see through compiled code); on CUDA the peak allocated memory;
TFLOP/s: the matmul FLOPs of the tower counted analytically (3x forward: forward and backward; the full
computation, the same count with or without the pooled-rows shortcut or recomputation) over the step time,
next to the rate of one large square matmul measured in the same run;
encode: no-grad forward throughput in captions/s.

--length-mix N adds a second table: N captions of mixed length (an assumed ShareGPT4V-like mix: normal, mean
170, sd 45 tokens, clipped to 60..context; not measured from the dataset), encoded as open_clip pads them (every
batch at the full context, in the given order) and padding-free (sorted by length, every batch cut to its longest
caption with ``open_clip_ext.trim_padding``), with the largest feature difference between the two. open_clip's
stock tower refuses input shorter than its context, so its padding-free column is n/a.

    python scripts/bench_text_tower.py                      # ViT-B-16 text size, CPU
    python scripts/bench_text_tower.py --device cuda --batch-size 128 --precision amp_bf16 --compile
    python scripts/bench_text_tower.py --base tiny-clip --batch-size 2 --rounds 1 --warmup 0   # smoke test
Targets (GPU, bf16, ViT-L-14 text size; the ratios are to eager stock): RoPE train step <= 0.55x and encode
throughput >= 1.8x; CoPE train step <= 1.4x, encode time <= 1.5x (throughput >= 0.67x), CUDA peak <= 1.3x;
everywhere: CoPE saved activations <= 1.5x stock. The script prints met/MISSED for each, on rope and rope+c and on
every memory-lean CoPE row (cope, cope-torch, cope-triton, compiled or not). ``make gpu-check`` runs it on a GPU.

On a shared CPU use --threads 1 --clock cpu: with several threads every parallel op waits for the slowest
thread's next time slice (a few ms each on a busy 2-core machine), which then measures op count, not work.
"""
import argparse
import contextlib
import copy
import statistics
import time
from typing import Optional, Tuple

import open_clip
import torch
from open_clip.model import CLIPTextCfg
from open_clip.transformer import TextTransformer

import open_clip_ext
from open_clip_ext.kernels.dispatch import triton_problem
from open_clip_ext.tokens import pooled_positions, text_pooling
from open_clip_ext.towers import build_relpos_text_tower

# (row kind, metric, bound, "max" or "min") against eager stock; see the module docstring
TARGETS = (("rope", "step_s", 0.55, "max"), ("rope", "encode_captions_per_s", 1.8, "min"),
           ("cope", "step_s", 1.4, "max"), ("cope", "encode_captions_per_s", 1 / 1.5, "min"),
           ("cope", "peak_bytes", 1.3, "max"), ("cope", "saved_bytes", 1.5, "max"))
# the rows each kind's targets judge: eager and compiled, always against eager stock
TARGET_ROWS = {"rope": ("rope", "rope+c"),
               "cope": ("cope", "cope-torch", "cope-triton", "cope+c", "cope-torch+c", "cope-triton+c")}


def build_towers(base: str, context_length: int, device_type: str = "cpu"):
    """The eager rows (see module docstring), freshly initialised; cope-triton only where the Triton kernels can
    run on ``device_type`` (``open_clip_ext.kernels.dispatch.triton_problem``)."""
    cfg = open_clip.get_model_config(base)
    text_cfg = dict(cfg["text_cfg"], context_length=context_length)
    defaults = CLIPTextCfg()
    stock = TextTransformer(context_length=context_length, vocab_size=text_cfg.get("vocab_size", defaults.vocab_size),
                            width=text_cfg["width"], heads=text_cfg["heads"], layers=text_cfg["layers"],
                            mlp_ratio=text_cfg.get("mlp_ratio", 4.0), output_dim=cfg["embed_dim"],
                            pool_type=text_cfg.get("pool_type", defaults.pool_type),
                            eos_id=text_cfg.get("eos_id", defaults.eos_id))
    towers = {"stock": stock}
    for position in ("rope", "cope"):
        # derived at the base's own length (a variant never reads less), then built at the benchmark's length so
        # that every row computes on the same sequence
        derived = open_clip_ext.derive_config(base, position, max(context_length, cfg["text_cfg"].get(
            "context_length", defaults.context_length)))
        ext_cfg = dict(derived["text_cfg"], context_length=context_length)
        towers[position] = build_relpos_text_tower(cfg["embed_dim"], ext_cfg)
    towers["rope-full"] = copy.deepcopy(towers["rope"])
    towers["rope-full"].last_block_at_pooled_rows = False
    impls = ("torch", "triton", "autograd") if triton_problem(device_type, context_length) is None else \
        ("torch", "autograd")
    for impl in impls:
        towers[f"cope-{impl}"] = copy.deepcopy(towers["cope"])
        towers[f"cope-{impl}"].set_cope_impl(impl)
    order = ("stock", "rope", "rope-full", "cope", "cope-torch", "cope-triton", "cope-autograd")
    return {name: towers[name] for name in order if name in towers}


def matmul_flops(base: str, context_length: int, batch_size: int, cope: bool) -> int:
    """Forward+backward matmul FLOPs of one step (2 per multiply-add; backward = 2x forward)."""
    cfg = open_clip.get_model_config(base)
    text = cfg["text_cfg"]
    width, layers, seq = text["width"], text["layers"], context_length
    hidden = int(width * text.get("mlp_ratio", 4.0))
    per_token = 2 * (4 * width * width + 2 * width * hidden)  # qkv + out projections, MLP
    attention = 2 * 2 * seq * width  # q k^T and A v, per query, summed over heads
    table = 2 * width * context_length if cope else 0  # CoPE's q @ pos_emb, per query
    forward = batch_size * (layers * seq * (per_token + attention + table) + 2 * width * cfg["embed_dim"])
    return 3 * forward


def end_and_vocab(base: str) -> Tuple[int, int]:
    """(the id every caption of ``base``'s text tower ends with, its vocabulary size): with 'eos' pooling its
    ``eos_id``, with 'argmax' pooling the vocabulary's largest id (where argmax pools)."""
    text, defaults = open_clip.get_model_config(base)["text_cfg"], CLIPTextCfg()
    vocab_size = text.get("vocab_size", defaults.vocab_size)
    if text.get("pool_type", defaults.pool_type) == "eos":
        return text.get("eos_id", defaults.eos_id), vocab_size
    return vocab_size - 1, vocab_size


def full_length_batch(batch_size: int, context_length: int, base: str) -> torch.Tensor:
    """(B, context) ids, ``base``'s end id in the last column of every row (torch's global generator)."""
    return mixed_length_ids(torch.full((batch_size,), context_length), context_length, *end_and_vocab(base))


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


def encode(tower, ids, autocast, device):
    with torch.no_grad(), autocast():
        tower(ids)
    if device.type == "cuda":
        torch.cuda.synchronize()


def cuda_peak_bytes(tower, ids, autocast, device) -> int:
    tower.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step(tower, ids, autocast, device)
    return torch.cuda.max_memory_allocated(device)


def measured_matmul_tflops(device, dtype, size: int, rounds: int = 5) -> float:
    """TFLOP/s of one (size x size) @ (size x size) product in ``dtype`` on ``device``, median of ``rounds``: the
    attainable matmul rate the towers' TFLOP/s are compared with (a data-sheet peak is rarely reached)."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times[1:]) / 1e12


def interleaved_medians(runs: dict, rounds: int, warmup: int, clock=time.perf_counter) -> dict:
    """Median seconds of each ``runs[name]()``, rounds interleaved with the order rotating each round."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            runs[name]()
            times[name].append(clock() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="ViT-B-16", help="open_clip config whose text size is used (tiny-clip too)")
    parser.add_argument("--context-length", type=int, default=248)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (each times every row once)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp_bf16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd rows (suffix +c)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="wall: elapsed time; cpu: CPU seconds of this process, all threads (steadier on a "
                             "shared machine, blind to GPU time)")
    parser.add_argument("--rows", default=None, help="comma-separated subset of rows (default: all)")
    parser.add_argument("--length-mix", type=int, default=0, metavar="N",
                        help="add the mixed-caption-length table over N captions (0: off)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Run the benchmark, print the table and return {row: {metric: value}}."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    eager = build_towers(args.base, args.context_length, device.type)
    if device.type == "cuda" and "cope-triton" not in eager:
        print(f"cope-triton: not run: {triton_problem('cuda', args.context_length)}")
    names = list(eager) + ([f"{k}+c" for k in eager] if args.compile else [])
    if args.rows:
        wanted = args.rows.split(",")
        unknown = set(wanted) - set(names)
        if unknown:
            raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {names}")
        names = [k for k in names if k in wanted or k == "stock"]
    # only the towers a chosen row needs go to the device (a compiled row runs its eager tower's module)
    eager = {k: v.to(device).train() for k, v in eager.items() if k in names or f"{k}+c" in names}
    towers = {k: eager[k] if k in eager else torch.compile(eager[k[:-2]]) for k in names}
    ids = full_length_batch(args.batch_size, args.context_length, args.base).to(device)
    if args.precision == "amp_bf16":
        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    steps = interleaved_medians({k: (lambda t=t: step(t, ids, autocast, device)) for k, t in towers.items()},
                                args.rounds, args.warmup, clock)
    encodes = interleaved_medians({k: (lambda t=t: encode(t, ids, autocast, device)) for k, t in towers.items()},
                                  args.rounds, args.warmup, clock)
    results = {}
    for name, tower in towers.items():
        try:
            saved = saved_activation_bytes(tower, ids, autocast)
        except Exception:  # hooks refused inside compiled code: reported as n/a, not as 0
            saved = None
        flops = matmul_flops(args.base, args.context_length, args.batch_size, name.startswith("cope"))
        results[name] = {"step_s": steps[name], "encode_captions_per_s": args.batch_size / encodes[name],
                         "saved_bytes": saved, "tflops": flops / steps[name] / 1e12,
                         "peak_bytes": cuda_peak_bytes(tower, ids, autocast, device) if device.type == "cuda"
                         else None}
    matmul_dtype = torch.bfloat16 if args.precision == "amp_bf16" else torch.float32
    peak = measured_matmul_tflops(device, matmul_dtype, 8192 if device.type == "cuda" else 1024)
    print_table(results, args, device, peak)
    if args.length_mix:
        results["length_mix"] = length_mix_table(towers, args, device, autocast, clock)
    return results


def _ratio(value, reference):
    return f"{value / reference:.3f}" if value is not None and reference else "n/a"


def print_table(results: dict, args, device, peak_tflops: float) -> None:
    stock = results["stock"]
    print(f"text tower of {args.base}: context {args.context_length}, batch {args.batch_size}, {args.precision} "
          f"on {device} ({torch.get_num_threads()} threads), median of {args.rounds} interleaved rounds, "
          f"{args.clock} clock")
    header = (f"{'row':<16} {'step ms':>9} {'/stock':>7} {'saved MiB':>10} {'/stock':>7} {'TFLOP/s':>8} "
              f"{'encode cap/s':>13} {'/stock':>7}")
    if device.type == "cuda":
        header += f" {'peak MiB':>9} {'/stock':>7}"
    print(header)
    for name, r in results.items():
        saved = f"{r['saved_bytes'] / 2**20:.1f}" if r["saved_bytes"] is not None else "n/a"
        line = (f"{name:<16} {r['step_s'] * 1e3:>9.1f} {_ratio(r['step_s'], stock['step_s']):>7} {saved:>10} "
                f"{_ratio(r['saved_bytes'], stock['saved_bytes']):>7} {r['tflops']:>8.3g} "
                f"{r['encode_captions_per_s']:>13.1f} "
                f"{_ratio(r['encode_captions_per_s'], stock['encode_captions_per_s']):>7}")
        if device.type == "cuda":
            line += f" {r['peak_bytes'] / 2**20:>9.1f} {_ratio(r['peak_bytes'], stock['peak_bytes']):>7}"
        print(line)
    best = max(results, key=lambda name: results[name]["tflops"])
    print(f"matmul rate measured in this run: {peak_tflops:.3g} TFLOP/s (one square product, "
          f"{'8192' if device.type == 'cuda' else '1024'}^3); best row {best}: {results[best]['tflops']:.3g} TFLOP/s "
          f"= {100 * results[best]['tflops'] / peak_tflops:.0f}% of it")
    for check in target_checks(results):
        print(f"{check['row']}: {check['metric']} {check['ratio']:.3f}x stock (target {check['target']}): "
              f"{'met' if check['met'] else 'MISSED'}")


def target_checks(results: dict) -> list:
    """Every target (``TARGETS``) judged on every row of ``results`` it applies to (``TARGET_ROWS``) that has the
    metric, in TARGETS order: dicts row, metric, ratio (to eager stock), target ('<= 1.40x'), met (bool)."""
    stock, checks = results["stock"], []
    for kind, metric, bound, direction in TARGETS:
        for name in TARGET_ROWS[kind]:
            value = results.get(name, {}).get(metric)
            if value is None or not stock.get(metric):
                continue
            ratio = value / stock[metric]
            checks.append({"row": name, "metric": metric, "ratio": ratio,
                           "target": f"{'<=' if direction == 'max' else '>='} {bound:.2f}x",
                           "met": ratio <= bound if direction == "max" else ratio >= bound})
    return checks


def mixed_lengths(count: int, context_length: int, generator: torch.Generator) -> torch.Tensor:
    """(count,) caption lengths in tokens, end token included: the assumed mix of the module docstring."""
    lengths = torch.normal(170.0, 45.0, (count,), generator=generator).round().long()
    return lengths.clamp(min(60, context_length), context_length)


def mixed_length_ids(lengths: torch.Tensor, context_length: int, end_id: int, vocab_size: int,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(N, context) token ids, zero-padded, ``end_id`` at position length - 1 of each row and nowhere else (the
    other ids drawn from 1..vocab_size - 1 without it)."""
    ids = torch.randint(1, vocab_size - 1, (len(lengths), context_length), generator=generator)
    ids[ids >= end_id] += 1  # skip the end id: a row's first end id is where it ends
    columns = torch.arange(context_length)
    ids[columns[None, :] >= lengths[:, None]] = 0
    ids[torch.arange(len(lengths)), lengths - 1] = end_id
    return ids


def encode_all(tower, ids, batch_size: int, autocast, device, padding_free: bool) -> torch.Tensor:
    """Features of every row of ``ids``, in row order; padding-free: sorted by length (the pooled end token's
    position), each batch trimmed."""
    if padding_free:
        order = torch.argsort(pooled_positions(ids, *text_pooling(tower)), stable=True)
    else:
        order = torch.arange(len(ids))
    chunks = []
    with torch.no_grad(), autocast():
        for start in range(0, len(ids), batch_size):
            batch = ids[order[start:start + batch_size]]
            chunks.append(tower(open_clip_ext.trim_padding(batch, tower) if padding_free else batch).float())
    if device.type == "cuda":
        torch.cuda.synchronize()
    features = torch.empty(len(ids), chunks[0].shape[-1], device=chunks[0].device)
    features[order] = torch.cat(chunks)
    return features


def length_mix_table(towers: dict, args, device, autocast, clock) -> dict:
    """The --length-mix table: padded against padding-free encoding of one mixed-length caption set."""
    generator = torch.Generator().manual_seed(0)
    lengths = mixed_lengths(args.length_mix, args.context_length, generator)
    ids = mixed_length_ids(lengths, args.context_length, *end_and_vocab(args.base), generator).to(device)
    runs = {}
    for name, tower in towers.items():
        if name.endswith("+c"):
            continue  # a compiled tower would recompile for every trimmed length
        for padding_free in (False, True)[:1 if name.startswith("stock") else 2]:
            runs[(name, padding_free)] = (lambda t=tower, p=padding_free:
                                          encode_all(t, ids, args.batch_size, autocast, device, p))
    times = interleaved_medians(runs, args.rounds, args.warmup, clock)
    results = {}
    for name in dict.fromkeys(key[0] for key in runs):
        free = (name, True) in runs
        padded, trimmed = (runs[(name, p)]() for p in (False, True)) if free else (None, None)
        results[name] = {"padded_captions_per_s": len(ids) / times[(name, False)],
                         "padding_free_captions_per_s": len(ids) / times[(name, True)] if free else None,
                         "max_abs_diff": (padded - trimmed).abs().max().item() if free else None}
    print(f"\nmixed caption lengths: {len(ids)} captions, {lengths.float().mean():.0f} tokens on average "
          f"(min {lengths.min()}, max {lengths.max()}), batch {args.batch_size}; padded = every batch at "
          f"{args.context_length} tokens, padding-free = sorted by length, each batch cut to its longest")
    print(f"{'row':<16} {'padded cap/s':>13} {'free cap/s':>11} {'x padded':>9} {'x stock padded':>15} "
          f"{'max |diff|':>11}")
    stock = results["stock"]["padded_captions_per_s"]
    for name, r in results.items():
        free = r["padding_free_captions_per_s"]
        if free is None:
            print(f"{name:<16} {r['padded_captions_per_s']:>13.1f} {'n/a':>11} {'n/a':>9} {'n/a':>15} {'n/a':>11}")
            continue
        print(f"{name:<16} {r['padded_captions_per_s']:>13.1f} {free:>11.1f} "
              f"{free / r['padded_captions_per_s']:>9.2f} {free / stock:>15.2f} {r['max_abs_diff']:>11.2e}")
    return results

if __name__ == "__main__":
    main()
