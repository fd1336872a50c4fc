"""Checks of what a run's flags name (model configs, weights, checkpoints, data paths, the run folder, loggers),
made after the flags are parsed and before any model is built: a mistake is one error line naming the fix, not a
traceback after the models have loaded.

Every check takes ``error(message)`` (``StageFlags.error``: prints ``<prog>: error: ...``, exits 2). This module
imports open_clip (through open_clip_ext, which registers this project's configs); ``engine.params`` reaches it
only after parsing, so ``--help`` stays light.
"""
import configparser
import importlib.util
import netrc
import os
import sys
from typing import Callable, List, Optional

import open_clip
import torch
import open_clip_ext  # noqa: F401  (registers the relative-position configs, so their names are known)
from open_clip_ext.configs import POSITION_DEFAULTS, unknown_model_error
from open_clip_ext.kernels import dispatch

Error = Callable[[str], None]
REPORT_TO = ("wandb", "tensorboard", "all")
STOCK_CONTEXT = 77  # open_clip's DEFAULT_CONTEXT_LENGTH: what a stock CLIP text tower reads


def model_config(name: str) -> Optional[dict]:
    """open_clip's config of ``name`` (as ``create_model`` resolves it); None for hf-hub:/local-dir: names, whose
    config comes with the weights."""
    schema, identifier = open_clip.factory.parse_model_name(name)
    if schema is not None:
        return None
    return open_clip.get_model_config(identifier.replace("/", "-"))


def is_remote_name(name: str) -> bool:
    return open_clip.factory.parse_model_name(name)[0] is not None


def require_model(name: str, flag: str, error: Error) -> Optional[dict]:
    """The config of a model name given with ``flag``; an unknown name stops with its close matches."""
    if is_remote_name(name):
        return None
    config = model_config(name)
    if config is None:
        error(f"{flag} {name}: {unknown_model_error(name)}")
    return config


def describe_text_tower(text_cfg: dict, context: Optional[int] = None) -> str:
    """'RoPE positions, 248 tokens', 'learned absolute positions, 77 tokens', ..."""
    kind = {"rope": "RoPE positions", "cope": "CoPE positions", "longclip": "Long-CLIP's stretched positions",
            "uniform": "uniformly resized learned positions",
            "context": "the Hugging Face model's own positions"}.get(text_cfg.get("pos_embed_type"),
                                                                   "learned absolute positions")
    return f"{kind}, {context or text_cfg.get('context_length', STOCK_CONTEXT)} tokens"


def check_readable_file(path: str, flag: str, error: Error) -> None:
    if not os.path.exists(path):
        error(f"{flag} {path}: no such file")
    if not os.path.isfile(path):
        error(f"{flag} {path}: not a file")
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as problem:
        error(f"{flag} {path}: cannot be read ({problem.strerror or problem})")


def check_weights_file(path: str, flag: str, error: Error) -> None:
    """A readable file that looks like whole weights (``open_clip_ext.convert.weights_file_problem``: its first
    bytes and zip directory, no tensor read)."""
    check_readable_file(path, flag, error)
    from open_clip_ext.convert import weights_file_problem
    problem = weights_file_problem(path)
    if problem:
        error(f"{flag} {path}: truncated or not a torch checkpoint ({problem}); copy it again or give another file")


def check_weights(model: str, pretrained: str, flag: str, error: Error) -> None:
    """``pretrained`` is a pretrained tag of ``model``, an hf-hub: name, or a readable file."""
    if not pretrained or pretrained.startswith("hf-hub:") or is_remote_name(model):
        return
    if os.path.exists(pretrained):
        check_weights_file(pretrained, flag, error)
        return
    if open_clip.get_pretrained_cfg(model, pretrained):
        return
    tags = open_clip.list_pretrained_tags_by_model(model)
    listed = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
    error(f"{flag} {pretrained}: no such file, and not a pretrained tag of {model} ({listed})")


def saved_model_config(path: str) -> Optional[dict]:
    from open_clip_ext.convert import read_saved_model_cfg
    return read_saved_model_cfg(path)


def text_signature(config: dict) -> dict:
    """What a text-tower checkpoint must share with a model to load into it: widths, vocabulary, context and
    position settings (with this project's defaults), and the output width."""
    text = config.get("text_cfg", {})
    position = text.get("pos_embed_type")
    signature = {key: text.get(key) for key in ("width", "heads", "layers", "vocab_size")}
    signature["context_length"] = text.get("context_length", STOCK_CONTEXT)
    signature["pos_embed_type"] = position
    signature.update({key: text.get(key, default) for key, default in POSITION_DEFAULTS.get(position, {}).items()})
    signature["embed_dim"] = config.get("embed_dim")
    return signature


def configs_with_text(signature: dict, prefer: str = "") -> List[str]:
    """Registered model names whose text tower has ``signature`` (names sharing ``prefer``'s base first)."""
    names = [name for name in open_clip.list_models()
             if text_signature(open_clip.get_model_config(name) or {}) == signature]
    return sorted(names, key=lambda name: (not name.startswith(prefer), len(name), name))


def check_run_folder(args, error: Error) -> None:
    """An existing run name is refused unless it is resumed, as open_clip_train does (here before any work). A run
    that ended before its first checkpoint holds nothing to continue or lose: its logs are set aside by
    session.start_run and the same command runs again."""
    if not args.name or not args.logs or args.logs.lower() == "none" or args.resume == "latest":
        return
    run_dir = os.path.join(args.logs, args.name)
    logs = [name for name in ("out.log",) + tuple(f"out-{rank}" for rank in range(8))
            if os.path.exists(os.path.join(run_dir, name))]
    from training_ext.engine.checkpoint import find_latest_checkpoint
    latest = find_latest_checkpoint(os.path.join(run_dir, "checkpoints")) if logs else None
    if latest:
        error(f"--name {args.name}: {run_dir} already holds a run with checkpoints ({os.path.basename(latest)}); "
              f"pass another --name, or --resume latest to continue it")


def check_resume(args, error: Error) -> None:
    if args.resume and args.resume != "latest":
        check_readable_file(args.resume, "--resume", error)
        from open_clip_ext.convert import CheckpointError
        from training_ext.engine.checkpoint import require_checkpoint_file
        try:
            require_checkpoint_file(args.resume)  # its zip directory only: cheap (--resume latest: engine.trainer)
        except CheckpointError as problem:
            error(str(problem))


def check_data_paths(args, error: Error, flags=("--train-data", "--val-data")) -> None:
    """Local CSV files and folders must exist and their type be known; so must every local shard a webdataset
    pattern names (the listing is kept for the dataset; remote URLs are checked when read)."""
    from training_ext.data.loaders import dataset_type
    from open_clip_train.distributed import world_info_from_env
    from training_ext.data.fingerprint import start_file_digest
    from training_ext.data.shard_checks import ShardsMissingError, shard_listing
    for flag in flags:
        path = getattr(args, flag[2:].replace("-", "_"))
        if not path:
            continue
        try:
            kind = dataset_type(args, path)
        except ValueError as problem:
            error(f"{flag} {path}: {problem}")
        if kind in ("csv", "folder") and not os.path.exists(path):
            error(f"{flag} {path}: no such {'file' if kind == 'csv' else 'folder'}")
        if kind == "webdataset":
            try:
                shard_listing(path, keep=True).check(flag)
            except ShardsMissingError as problem:
                error(str(problem))
        # the data's fingerprint, hashed in the background from here: by the rank that saves checkpoints, or by
        # every rank when a resume is checked
        if kind == "csv" and flag == "--train-data" and (getattr(args, "resume", None)
                                                          or world_info_from_env()[1] == 0):
            start_file_digest(path)


def wandb_credentials() -> Optional[str]:
    """Where wandb would find credentials (wandb's order: WANDB_API_KEY, an identity token file, its settings
    files, the .netrc entry of its host), or None. Offline and disabled modes need none."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(name):
            return name
    config_dir = os.environ.get("WANDB_CONFIG_DIR") or os.path.expanduser("~/.config/wandb")
    for settings in (os.path.join(config_dir, "settings"), os.path.join("wandb", "settings")):
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
        except configparser.Error:
            continue
        if parser.has_option("default", "api_key"):
            return settings
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    candidates = [os.environ["NETRC"]] if os.environ.get("NETRC") else [os.path.expanduser("~/.netrc"),
                                                                          os.path.expanduser("~/_netrc")]
    for path in candidates:
        try:
            if netrc.netrc(path).authenticators(host):
                return path
        except (OSError, netrc.NetrcParseError):
            continue
    return None


def check_loggers(args, error: Error) -> None:
    """--report-to: known names, the packages installed, and wandb credentials. Without credentials the run logs
    to wandb offline (a warning says how to sync) instead of failing when wandb.init is reached."""
    wanted = [name.strip() for name in args.report_to.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in REPORT_TO]
    if unknown:
        error(f"--report-to {args.report_to}: unknown logger {', '.join(unknown)} (choose from wandb, tensorboard, "
              "all; comma-separated)")
    if {"wandb", "all"} & set(wanted):
        if importlib.util.find_spec("wandb") is None:
            error("--report-to wandb needs the wandb package (pip install wandb)")
        if wandb_credentials() is None:
            os.environ["WANDB_MODE"] = "offline"
            note = ("wandb: no login found (WANDB_API_KEY, wandb settings or ~/.netrc): logging offline to "
                    "<logs>/<name>/wandb; run 'wandb login' before training, or 'wandb sync <that folder>' after")
            print(f"warning: {note}", file=sys.stderr)
            args.flag_notes.append(note)
    if {"tensorboard", "all"} & set(wanted) and importlib.util.find_spec("tensorboard") is None:
        error("--report-to tensorboard needs the tensorboard package (pip install tensorboard)")


def check_cope_impl(args, config: Optional[dict], error: Error) -> None:
    """--cope-impl, or OPEN_CLIP_EXT_COPE_IMPL where the flag leaves the choice to it, must fit the model and this
    machine: only a CoPE text tower takes the flag, and the Triton kernels need Triton, a CUDA device and eager
    code (compiled code runs the PyTorch op). Refused here, before any model is built, rather than falling back:
    a run asked for Triton should not quietly measure or train something else. ``config`` is the model's open_clip
    config (None for hub names: then the tower is checked when it is built)."""
    text = (config or {}).get("text_cfg") or {}
    if config is not None and text.get("pos_embed_type") != "cope":
        if args.cope_impl:
            error(f"--cope-impl {args.cope_impl} applies to CoPE text towers; --model {args.model} has "
                  f"{describe_text_tower(text, args.force_context_length)}: drop --cope-impl")
        return
    if args.cope_impl in (None, "function"):
        try:
            kernel = dispatch.env_cope_impl()
        except ValueError as problem:
            error(f"{problem}; or give --cope-impl torch")
        source = f"{dispatch.ENV_VAR}={kernel}"
    else:
        kernel, source = args.cope_impl, f"--cope-impl {args.cope_impl}"
    if kernel != "triton":
        return
    if args.torchcompile:
        error(f"{source} with --torchcompile: compiled code runs the PyTorch op, never the Triton kernels; drop one "
              "of the two")
    device = str(args.device).split(":")[0]
    if device == "cuda" and not torch.cuda.is_available():
        device = "this machine (--device cuda, but torch sees no CUDA GPU)"
    problem = dispatch.triton_problem(device, args.force_context_length or text.get("context_length"),
                                      fix="use --cope-impl torch")
    if problem:
        error(f"{source}: {problem}")


def check_csv_data(args, error: Error, text_only_train: bool) -> None:
    """Read and check the CSVs the run trains and validates on, as the datasets will read them (kept for them, so
    no file is parsed twice): a malformed record, a missing column or a file that is not UTF-8 stops the run here,
    before any model is built. ``text_only_train``: the training set is read for its captions only (stage 1)."""
    from training_ext.common.csv_table import CsvFormatError
    from training_ext.common.text_files import TextDecodeError
    from training_ext.data.csv_datasets import image_table, text_table
    from training_ext.data.loaders import dataset_type
    for flag, path in (("--train-data", args.train_data), ("--val-data", getattr(args, "val_data", None))):
        if not path or dataset_type(args, path) != "csv" or not os.path.isfile(path):
            continue
        try:
            if flag == "--train-data" and text_only_train:
                text_table(path, args.csv_caption_key, args.csv_separator, args.csv_img_key, keep=True)
            else:
                image_table(path, args.csv_img_key, args.csv_caption_key,
                            args.csv_short_caption_key if flag == "--train-data" else None, args.csv_separator,
                            keep=True)
        except (CsvFormatError, TextDecodeError, ValueError, KeyError) as problem:
            error(f"{flag} {path}: {problem}" if path not in str(problem) else str(problem))


def check_common(args, error: Error, text_only_train: bool = False) -> None:
    """The checks both stages make after their own: resume file, data paths and CSV contents, run folder,
    loggers. ``text_only_train``: stage 1, which reads only the training set's captions."""
    check_resume(args, error)
    check_data_paths(args, error)
    check_csv_data(args, error, text_only_train)
    check_run_folder(args, error)
    check_loggers(args, error)
