"""Fixture data and command lines for the training tests (tiny configs, CPU, fp32, no workers)."""
import csv
import os
import random
from typing import List, Optional

import open_clip_ext  # noqa: F401  (registers the tiny configs)
import torch
from PIL import Image

STUDENT = "tiny-clip-rope-248"
TEACHER = "tiny-clip"

_WORDS = ("red blue green small large wooden metal cat dog tree house river car street window lamp table "
          "chair cloud mountain bird boat road bridge flower garden").split()


def long_caption(index: int, sentences: int = 4) -> str:
    """Several sentences; the first one is a summary, as in ShareGPT4V."""
    rng = random.Random(index)
    parts = [f"A picture of item {index} with a {rng.choice(_WORDS)} {rng.choice(_WORDS)}."]
    for _ in range(sentences - 1):
        parts.append("It shows " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 20))) + ".")
    return " ".join(parts)


def write_image(path: str, index: int, size: int = 40) -> None:
    rng = random.Random(1000 + index)
    Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3))).save(path)


def write_csv(folder: str, rows: int, images: bool = True, short_column: bool = False, name: str = "data.csv",
              image_dir: Optional[str] = None) -> str:
    """An open_clip CSV (tab-separated, filepath + title [+ short]); images are written unless images=False
    (then the paths point nowhere)."""
    image_dir = image_dir or os.path.join(folder, "images")
    os.makedirs(image_dir, exist_ok=True)
    path = os.path.join(folder, name)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(["filepath", "title"] + (["short"] if short_column else []))
        for index in range(rows):
            image_path = os.path.join(image_dir, f"{index}.png")
            if images:
                write_image(image_path, index)
            writer.writerow([image_path, long_caption(index)] + ([f"short caption {index}"] if short_column else []))
    return path


def base_args(logs: str, name: str, train: Optional[str] = None, batch_size: int = 4, epochs: int = 1,
              extra: Optional[List[str]] = None, device: str = "cpu", precision: str = "fp32") -> List[str]:
    argv = ["--logs", logs, "--name", name, "--batch-size", str(batch_size), "--epochs", str(epochs),
            "--precision", precision, "--device", device, "--workers", "0", "--lr", "1e-3", "--warmup", "1",
            "--seed", "0", "--log-every-n-steps", "1"]
    if train:
        argv += ["--train-data", train, "--dataset-type", "csv"]
    return argv + list(extra or [])


def distill_args(logs: str, name: str, train: str, **kwargs) -> List[str]:
    return ["--model", STUDENT, "--teacher-model", TEACHER] + base_args(logs, name, train, **kwargs)


def save_stock_teacher(path: str) -> str:
    """A random stock 77-token tiny CLIP saved as an open_clip_train-style checkpoint."""
    import open_clip
    torch.manual_seed(123)
    teacher = open_clip.create_model(TEACHER)
    torch.save({"epoch": 1, "name": "teacher", "state_dict": teacher.state_dict()}, path)
    return path


def checkpoint_state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_state_dicts_close(a: dict, b: dict, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=lambda m: f"{key}: {m}")
