"""python -m open_clip_ext.export: write an open_clip model for transformers or the Hugging Face Hub.

  transformers  a transformers directory: CLIPModel for absolute positions (stock, Long-CLIP, uniform), a
                RelPosCLIPTextModelWithProjection with its own code (+ vision/ CLIPVisionModelWithProjection) for
                RoPE / CoPE
  open-clip     open_clip's Hub layout in a local directory (load with open_clip.create_model('local-dir:DIR'))
  push          the same, uploaded to a Hub repo (load with open_clip.create_model('hf-hub:REPO'))
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import open_clip

import open_clip_ext  # noqa: F401  (registers this package's configs and towers with open_clip)
from open_clip_ext.configs import register_variant, split_variant_name
from open_clip_ext.export import export_clip, export_relpos_text_model, push_to_hub, save_open_clip_dir
from open_clip_ext.export.tokenizer import EOT
from open_clip_ext.text_tower import RelPosTextTransformer

EXAMPLES = """examples:
  python -m open_clip_ext.export transformers --model LongCLIP-ViT-L-14 --pretrained longclip-L.pt --output out/
  python -m open_clip_ext.export transformers --model ViT-L-14-rope-248 --pretrained stage2.pt --output out/
  python -m open_clip_ext.export push --model ViT-L-14-rope-248 --pretrained stage2.pt --repo-id me/rope-L \\
      --base "ViT-L-14 (openai)" --recipe-file recipe.md --results eval_out/results.json
"""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_ext.export", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("transformers", "open-clip", "push"):
        command = commands.add_parser(name)
        command.add_argument("--model", required=True,
                             help="open_clip model name: registered, <base>-<rope|cope|longclip|uniform>-<N> of a "
                                  "registered base (derived on the fly), or local-dir:/hf-hub:")
        command.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file")
        if name == "push":
            command.add_argument("--repo-id", required=True, help="Hub repository, e.g. me/ViT-L-14-rope-248")
            command.add_argument("--private", action="store_true")
            command.add_argument("--token", default=None,
                                 help="Hub token (default: $HF_TOKEN, else the token `hf auth login` saved)")
        else:
            command.add_argument("--output", required=True, help="directory to write")
        if name == "transformers":
            command.add_argument("--pad-token", default=EOT, choices=[EOT, "!"],
                                 help="tokenizer pad token (default %(default)s, as OpenAI's CLIP tokenizer)")
            command.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer / processor")
            command.add_argument("--no-vision", action="store_true",
                                 help="RoPE / CoPE: skip the image tower (written to OUTPUT/vision otherwise)")
        else:
            command.add_argument("--base", default=None, help="model card: the base model, e.g. 'ViT-L-14 (openai)'")
            command.add_argument("--base-model-id", default=None, help="model card metadata: the base's Hub id")
            command.add_argument("--recipe", default=None, help="model card: training recipe (markdown)")
            command.add_argument("--recipe-file", default=None, help="model card: training recipe from a file")
            command.add_argument("--results", default=None, help="model card: results.json of training_ext.eval")
            command.add_argument("--license", default="mit")
    return parser.parse_args(argv)


def _card_options(args) -> dict:
    recipe = args.recipe
    if args.recipe_file:
        recipe = Path(args.recipe_file).read_text(encoding="utf-8")
    return {"base": args.base, "base_model_id": args.base_model_id, "recipe": recipe, "results": args.results,
            "license": args.license}


def ensure_registered(name: str) -> None:
    """Register ``<base>-<position>-<N>`` (e.g. ViT-bigG-14-longclip-248) on the fly when its base is known."""
    parsed = split_variant_name(name)
    if open_clip.get_model_config(name) is None and parsed and open_clip.get_model_config(parsed[0]) is not None:
        register_variant(*parsed)


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    ensure_registered(args.model)
    model = open_clip.create_model(args.model, pretrained=args.pretrained).eval()
    if args.command == "transformers":
        options = {"tokenizer": not args.no_tokenizer, "pad_token": args.pad_token}
        if isinstance(getattr(model, "text", None), RelPosTextTransformer):
            where = export_relpos_text_model(model, args.output, vision=not args.no_vision, **options)
        else:
            where = export_clip(model, args.output, **options)
    elif args.command == "open-clip":
        where = save_open_clip_dir(model, args.output, model_name=args.model, **_card_options(args))
    else:
        where = push_to_hub(model, args.repo_id, model_name=args.model, token=args.token, private=args.private,
                            **_card_options(args))
    print(f"wrote {where}", file=sys.stderr)
    return str(where)


if __name__ == "__main__":
    main()
