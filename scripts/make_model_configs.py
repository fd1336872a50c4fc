"""Regenerate the derived JSONs in model_configs/ from open_clip's stock configs.

The shipped JSONs are data (so `open_clip.get_model_config` and `list_models` see them without code), but they
must equal what `open_clip_ext.derive_config` makes from their base;
tests/open_clip_ext/test_open_clip_api.py::test_shipped_configs_are_up_to_date checks that.

    python scripts/make_model_configs.py            # rewrite model_configs/
    python scripts/make_model_configs.py --check    # exit 1 if a file is stale
"""
import argparse
import json
import sys

import open_clip_ext
from open_clip_ext.configs import TULIP_EVAL_SCRIPT_SUFFIX, derive_config, shipped_config_dir, tulip_release_config
from training_ext.common.text_files import read_text

STANDARD_BASES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "ViT-bigG-14")
# TULIP's released checkpoints, loaded from the file with pretrained=PATH: as trained (QuickGELU image tower from
# the OpenAI loader, GELU RoPE/CoPE student), TULIP's CoPE choices; `-evalscript`: GELU image tower, as
# eval_tulip.py computes with --pretrained=<file> (docs/checkpoints.md).
TULIP_BASES = ("ViT-B-16", "ViT-L-14", "ViT-L-14-336")
# Absolute-position baselines: Long-CLIP's stretched table and open_clip's uniform resize (force_context_length).
BASELINE_BASES = ("ViT-B-16", "ViT-L-14", "tiny-clip")
# Long-CLIP's released longclip-B.pt / longclip-L.pt: OpenAI CLIP fine-tuned, hence QuickGELU; pretrained=PATH.
LONGCLIP_BASES = ("ViT-B-16", "ViT-L-14")


def wanted_configs() -> dict:
    configs = {}
    for base in STANDARD_BASES + ("tiny-clip",):
        for position in ("rope", "cope"):
            configs[f"{base}-{position}-248"] = derive_config(base, position, 248)
    for base in TULIP_BASES:
        for position in ("rope", "cope"):
            name = f"TULIP-{base}-{position}-248"
            configs[name] = tulip_release_config(base, position, 248)
            configs[name + TULIP_EVAL_SCRIPT_SUFFIX] = tulip_release_config(base, position, 248, eval_script=True)
    for base in BASELINE_BASES:
        for position in ("longclip", "uniform"):
            configs[f"{base}-{position}-248"] = derive_config(base, position, 248)
    for base in LONGCLIP_BASES:
        cfg = derive_config(base, "longclip", 248)
        cfg["quick_gelu"] = True
        configs[f"LongCLIP-{base}"] = cfg
    return configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale or missing files")
    args = parser.parse_args(argv)
    stale = []
    for name, cfg in wanted_configs().items():
        path = shipped_config_dir() / f"{name}.json"
        text = json.dumps(cfg, indent=4) + "\n"
        if path.exists() and read_text(str(path)) == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text)
    print(("stale: " if args.check else "written: ") + (", ".join(stale) or "none"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
