"""Webdataset shards and damaged files for the data tests: tar members written as given, JPEGs whole or cut short."""
import io
import tarfile
from typing import Dict, Iterable, Tuple

from PIL import Image


def jpeg_bytes(index: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (index * 20 % 256, 0, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def truncated_jpeg(index: int) -> bytes:
    """A JPEG cut off half way: PIL opens it, and fails only when decoding the pixels (the common real damage)."""
    data = jpeg_bytes(index, size=64)
    return data[: len(data) // 2]


def write_shard(path, samples: Iterable[Tuple[str, Dict[str, bytes]]]) -> str:
    """A tar whose members are ``KEY.EXT`` for each (key, {ext: payload}), in order."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for extension, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return str(path)
