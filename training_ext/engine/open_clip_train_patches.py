"""Every change this project makes to open_clip_train's internals, in one place, checked at import.

``python -m training_ext.main`` runs open_clip_train's own ``main`` unchanged; only its CSV data is ours, so that
every CSV the project reads follows one rule (training_ext.common.csv_table: standard CSV quoting as pandas reads it,
a malformed record named by file and line, relative image paths from ``--csv-image-root`` or the CSV's folder).

- ``open_clip_train.data.CsvDataset`` is replaced by ``OpenClipTrainCsvDataset`` (same constructor and items).
  ``open_clip_train.data.get_csv_dataset`` looks the name up when it runs, so it builds ours.

An open_clip_train whose names changed stops at import with its version named (like open_clip_ext/patches.py for
open_clip); the tested range is the one setup.cfg pins (open_clip_torch[training] >=3.3,<3.4).
"""
from importlib import metadata
from typing import Optional

import open_clip_train.data

from training_ext.data.loaders import CsvImageTextDataset
from training_ext.data.skips import decode_image


def _open_clip_train_version() -> str:
    try:
        return metadata.version("open_clip_torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def check_open_clip_train() -> None:
    """Raise ImportError naming the installed version when a name patched here is gone or no longer used."""
    data = open_clip_train.data
    problems = [f"open_clip_train.data.{name} is gone" for name in ("CsvDataset", "get_csv_dataset")
                if not hasattr(data, name)]
    if not problems and "CsvDataset" not in data.get_csv_dataset.__code__.co_names:
        problems.append("open_clip_train.data.get_csv_dataset no longer builds CsvDataset")
    if problems:
        raise ImportError(f"training_ext cannot patch open_clip_train (open_clip_torch {_open_clip_train_version()}): "
                          f"{'; '.join(problems)}. It was tested with open_clip_torch >=3.3,<3.4; install that range.")


check_open_clip_train()


class OpenClipTrainCsvDataset(CsvImageTextDataset):
    """open_clip_train's CsvDataset interface, ``(image, caption ids)`` per row, read by the project's CSV reader.

    Rows with an empty caption are skipped and counted, as in the stages. A missing image stops the run before
    training (row and path named); open_clip_train's loop cannot drop a sample from a batch, so an image that
    cannot be decoded stops it too, naming the row and path (RuntimeError), instead of skipping as the stages do.
    """
    image_root: Optional[str] = None  # --csv-image-root, set by use_project_csv_reader

    def __init__(self, input_filename, transforms, img_key, caption_key, sep="\t", tokenizer=None):
        super().__init__(input_filename, img_key, caption_key, tokenizer, transforms, sep=sep,
                         image_root=type(self).image_root)

    def __getitem__(self, index):
        image_path = self.image_paths[index]
        where = self.where(self.row_numbers[index])
        pixels = decode_image(image_path, self.transform, self.skips, f"{where}: {image_path}")
        if pixels is None:
            raise RuntimeError(f"{where}: image {image_path} cannot be decoded; training_ext.main (open_clip_train's "
                               f"loop) cannot skip a sample: replace the file or remove the row")
        return pixels, self.tokenize([self.captions[index]])[0]


def use_project_csv_reader(image_root: Optional[str] = None) -> None:
    """Make open_clip_train read CSVs with OpenClipTrainCsvDataset; ``image_root`` is --csv-image-root."""
    OpenClipTrainCsvDataset.image_root = image_root
    open_clip_train.data.CsvDataset = OpenClipTrainCsvDataset
