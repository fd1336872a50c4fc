"""python -m open_clip_ext.export: write an open_clip model for transformers or the Hugging Face Hub.

  transformers  a transformers directory: CLIPModel for absolute positions (stock, Long-CLIP, uniform), a
                RelPosCLIPTextModelWithProjection with its own code (+ vision/ CLIPVisionModelWithProjection) for
                RoPE / CoPE
  open-clip     open_clip's Hub layout in a local directory (load with open_clip.create_model('local-dir:DIR'))
  push          the same, uploaded to a Hub repo (load with open_clip.create_model('hf-hub:REPO'))

The model name, the weights, --recipe-file and --results (and, for push, the Hub login and network) are checked
before the model is built; a mistake is one `error:` line naming the flag and the fix, exit status 2.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import open_clip
# errors.HTTPError: the base of the HTTP client's errors, whichever client huggingface_hub uses (a connection
# error included); older, requests-based versions raise OSError subclasses
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

import open_clip_ext  # noqa: F401  (registers this package's configs and towers with open_clip)
from open_clip_ext.configs import model_name_problem
from open_clip_ext.export import export_clip, export_relpos_text_model, push_to_hub, save_open_clip_dir
from open_clip_ext.export.hub import read_eval_results
from open_clip_ext.export.tokenizer import EOT
from open_clip_ext.export.transformers_clip import ExportError
from open_clip_ext.model_specs import model_spec_problem, pretrained_problem
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
            command.add_argument("--private", action="store_true",
                                 help="create the repository private (a repository that exists keeps its "
                                      "visibility)")
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
            command.add_argument("--license", default="mit",
                                 help="model card metadata: the weights' license as a Hub license id, e.g. "
                                      "apache-2.0, cc-by-nc-4.0 (default %(default)s); give the base model's")
    return parser.parse_args(argv)


class UsageError(ValueError):
    """A flag that names something that cannot work; the message names the flag and the fix."""


def _card_options(args) -> dict:
    """The model card's options; the --recipe-file and --results files are read here, before the model is built."""
    recipe = args.recipe
    if args.recipe_file:
        try:
            recipe = Path(args.recipe_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--recipe-file {args.recipe_file}: cannot read it ({error}); give a UTF-8 text "
                             f"file, or the text itself with --recipe") from None
    if args.results:
        try:
            read_eval_results(args.results)
        except ExportError as error:  # names the file and what it lacks
            raise UsageError(f"--results {error}") from None
    return {"base": args.base, "base_model_id": args.base_model_id, "recipe": recipe, "results": args.results,
            "license": args.license}


def check_hub_access(token: Optional[str]) -> None:
    """One request to the Hub (whoami) before the model is built: no token, a rejected token or no network is a
    UsageError saying which, and what to do."""
    from huggingface_hub import whoami

    try:
        whoami(token=token)
    except LocalTokenNotFoundError:
        raise UsageError("push: no Hugging Face token: run `hf auth login`, set $HF_TOKEN, or pass --token") from None
    except HfHubHTTPError as error:
        raise UsageError(f"push: the Hub refused the token ({str(error).splitlines()[0]}); run `hf auth login` "
                         f"again, or pass another --token") from None
    except (HTTPError, OfflineModeIsEnabled, OSError) as error:
        raise UsageError(f"push: cannot reach the Hugging Face Hub ({type(error).__name__}: {error}); check the "
                         f"network, or write the folder with `open-clip --output DIR` and upload it later with "
                         f"`hf upload REPO DIR`") from None


def check_arguments(args) -> dict:
    """Everything the flags name, before the model is built. Returns the card options (open-clip, push).
    Raises UsageError or ExportError."""
    ensure_registered(args.model)  # an unknown name: its own error line
    problem = model_spec_problem(args.model, None)  # a local-dir: folder that is not there
    if problem:
        raise UsageError(f"--model {args.model}: {problem}")
    problem = pretrained_problem(args.model, args.pretrained)
    if problem:
        raise UsageError(f"--pretrained {args.pretrained}: {problem}")
    options = _card_options(args) if args.command != "transformers" else {}
    if args.command == "push":
        check_hub_access(args.token)
    return options


def ensure_registered(name: str) -> None:
    """UsageError with the close names when ``--model`` names no config (``<base>-<kind>-<N>`` registers itself)."""
    problem = model_name_problem(name)
    if problem:
        raise UsageError(f"--model {problem}")


def export(args, card_options: dict) -> str:
    model = open_clip.create_model(args.model, pretrained=args.pretrained).eval()
    if args.command == "transformers":
        options = {"tokenizer": not args.no_tokenizer, "pad_token": args.pad_token}
        if isinstance(getattr(model, "text", None), RelPosTextTransformer):
            return export_relpos_text_model(model, args.output, vision=not args.no_vision, **options)
        return export_clip(model, args.output, **options)
    if args.command == "open-clip":
        return save_open_clip_dir(model, args.output, model_name=args.model, **card_options)
    try:
        return push_to_hub(model, args.repo_id, model_name=args.model, token=args.token, private=args.private,
                           **card_options)
    except (HfHubHTTPError, HTTPError, OSError) as error:  # the Hub or the network failed midway
        raise UsageError(f"push to {args.repo_id} failed ({type(error).__name__}: {str(error).splitlines()[0]}); "
                         f"run the same command again, or write the folder with `open-clip --output DIR` and "
                         f"upload it with `hf upload {args.repo_id} DIR`") from None


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Returns the path (or, for push, the commit) written. A flag naming something that cannot work, or an export
    refused (ExportError), is one `error:` line on stderr and SystemExit(2), no traceback."""
    args = parse_args(argv)
    try:
        where = export(args, check_arguments(args))
    except (UsageError, ExportError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {where}", file=sys.stderr)
    return str(where)


if __name__ == "__main__":
    main()
