"""scripts/bench_text_tower.py on tiny configs: it runs, reports every row, and its saved-activation accounting
shows the memory-lean CoPE path under 1.5x the stock tower at ViT-B-16 text size. No timing assertions."""
import contextlib
import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch

import open_clip_ext

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_text_tower", ROOT / "scripts" / "bench_text_tower.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_on_tiny_config(capsys):
    results = _bench().main(["--base", "tiny-clip", "--context-length", "32", "--batch-size", "2", "--rounds", "1",
                             "--warmup", "0"])
    assert list(results) == ["stock", "rope", "rope-full", "cope", "cope-torch", "cope-autograd"]
    for row in results.values():
        assert row["step_s"] > 0 and row["encode_captions_per_s"] > 0 and row["tflops"] > 0
        assert row["saved_bytes"] > 0 and row["peak_bytes"] is None  # CPU: no CUDA peak
    assert results["cope"]["saved_bytes"] < results["cope-autograd"]["saved_bytes"]
    assert results["rope"]["saved_bytes"] < results["rope-full"]["saved_bytes"]  # pooled last block saves less
    printed = capsys.readouterr().out
    assert all(name in printed for name in results) and "saved_bytes 0." in printed
    assert "matmul rate measured in this run" in printed


def test_matmul_flops_count():
    bench = _bench()
    # tiny-clip text: width 64, 2 layers, mlp 4x, embed 64; 32 tokens, batch 2
    per_token = 2 * (4 * 64 * 64 + 2 * 64 * 256) + 2 * 2 * 32 * 64
    forward = 2 * (2 * 32 * per_token + 2 * 64 * 64)
    assert bench.matmul_flops("tiny-clip", 32, 2, cope=False) == 3 * forward
    assert bench.matmul_flops("tiny-clip", 32, 2, cope=True) == 3 * (forward + 2 * 2 * 32 * 2 * 64 * 32)


def test_cope_saves_at_most_1_5x_stock_at_vit_b16_text_size():
    """ViT-B-16 text width/heads at 248 tokens, two layers (the per-layer ratio is what matters), fp32."""
    cfg = open_clip.get_model_config("ViT-B-16")
    cfg = dict(cfg, text_cfg=dict(cfg["text_cfg"], layers=2))
    open_clip_ext.configs.register_model_config("ViT-B-16-2-layer-text-bench-test", cfg)
    bench = _bench()
    towers = bench.build_towers("ViT-B-16-2-layer-text-bench-test", 248)
    ids = bench.full_length_batch(2, 248, "ViT-B-16-2-layer-text-bench-test")
    for name in ("cope", "cope-autograd"):  # every layer full: the bound must not lean on the pooled last block
        towers[name].last_block_at_pooled_rows = False
    saved = {name: bench.saved_activation_bytes(towers[name], ids, contextlib.nullcontext)
             for name in ("stock", "cope", "cope-autograd")}
    assert saved["cope"] <= 1.5 * saved["stock"]
    assert saved["cope-autograd"] > 2 * saved["stock"]  # the accounting does see (B, H, L, L) tensors


@pytest.mark.slow
def test_bench_compile_rows_on_tiny_config():
    results = _bench().main(["--base", "tiny-clip", "--context-length", "16", "--batch-size", "2", "--rounds", "1",
                             "--warmup", "0", "--compile", "--rows", "cope,cope+c"])
    assert list(results) == ["stock", "cope", "cope+c"]
    assert results["cope+c"]["step_s"] > 0


def test_length_mix_table_matches_padded_features(capsys):
    results = _bench().main(["--base", "tiny-clip", "--context-length", "96", "--batch-size", "4", "--rounds", "1",
                             "--warmup", "0", "--rows", "rope,cope", "--length-mix", "12"])
    mix = results["length_mix"]
    assert mix["stock"]["padding_free_captions_per_s"] is None  # open_clip's tower refuses trimmed input
    for name in ("rope", "cope"):
        assert mix[name]["max_abs_diff"] <= 1e-5 and mix[name]["padding_free_captions_per_s"] > 0
    assert "mixed caption lengths: 12 captions" in capsys.readouterr().out


def test_mixed_lengths_stay_in_range_and_place_eot():
    bench = _bench()
    generator = torch.Generator().manual_seed(0)
    lengths = bench.mixed_lengths(500, 248, generator)
    assert lengths.min() >= 60 and lengths.max() <= 248 and 150 < lengths.float().mean() < 190
    end_id, vocab_size = bench.end_and_vocab("tiny-clip")
    assert (end_id, vocab_size) == (open_clip.get_tokenizer("tiny-clip").eot_token_id, 49408)  # argmax: largest id
    ids = bench.mixed_length_ids(lengths[:20], 248, end_id, vocab_size, generator)
    for row, length in zip(ids.tolist(), lengths[:20].tolist()):
        assert row.index(end_id) == length - 1 and not any(row[length:]) and max(row) == end_id
    eos_ids = bench.mixed_length_ids(lengths[:20], 248, 2, 30, generator)  # 'eos' pooling at id 2 (MetaCLIP 2)
    for row, length in zip(eos_ids.tolist(), lengths[:20].tolist()):
        assert row.index(2) == length - 1 and row.count(2) == 1 and max(row) < 30
