"""Helpers for the data preparation tests: tiny images, script loading, reading shards back."""
import importlib.util
import json
import os
import random
import tarfile
from pathlib import Path

import webdataset as wds
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def tiny_image(path, seed: int, size=(6, 5), image_format=None) -> str:
    """A few random pixels saved at `path` (format from the extension unless given); returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = random.Random(seed).randbytes(size[0] * size[1] * 3)
    Image.frombytes("RGB", size, pixels).save(path, format=image_format)
    return path


def file_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def load_script(name: str):
    """Import scripts/<name>.py as a module, to call its main(argv) in-process (fast)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_shards_with_webdataset(urls):
    """Every sample of the shards as webdataset yields it, undecoded: {"__key__", "txt": bytes, ...}."""
    dataset = wds.WebDataset(urls, shardshuffle=False)
    return [{k: v for k, v in sample.items() if k != "__url__" and k != "__local_path__"} for sample in dataset]


def count_samples_in_tar(path) -> int:
    """Samples in a shard counted straight from the tar: distinct names before the first dot."""
    with tarfile.open(path) as tar:
        return len({member.name.split(".", 1)[0] for member in tar.getmembers()})


def read_json(path):
    with open(path) as handle:
        return json.load(handle)
