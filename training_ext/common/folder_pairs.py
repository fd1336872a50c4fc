"""Pairing a train-CLIP style folder: ``a/b/x.jpg`` with an ``x.txt`` anywhere under the same root.

Shared by folder-dataset training (training_ext.data.folder) and data preparation (training_ext.prep.sources),
so both read a folder by the same rule.
"""
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from training_ext.common.captions import clean_caption
from training_ext.common.text_files import TextDecodeError, read_text

# The image types open_clip_train's webdataset pipeline decodes ("jpg;png;jpeg;webp") plus a few that the
# shard writer re-encodes to PNG.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TEXT_EXTENSION = ".txt"
_SHOWN = 3  # paths named in a warning about left-out files


@dataclass
class FolderPairs:
    """The result of pairing a folder: (image, caption file) pairs and what could not be paired."""
    root: str
    pairs: List[Tuple[str, str]]
    orphan_images: List[str]  # images with no caption file of the same stem
    orphan_texts: List[str]   # caption files that no image claimed


def _stem(filename: str) -> str:
    return os.path.splitext(filename)[0]


def _walk_files(root: str, progress: bool) -> Tuple[List[str], List[str]]:
    """All image and caption files under root (sorted, so that pairing is deterministic)."""
    from tqdm import tqdm

    images, texts = [], []
    with tqdm(desc=f"scanning {root}", unit=" files", disable=not progress) as bar:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            for name in files:
                extension = os.path.splitext(name)[1].lower()
                if extension in IMAGE_EXTENSIONS:
                    images.append(os.path.join(folder, name))
                elif extension == TEXT_EXTENSION:
                    texts.append(os.path.join(folder, name))
            bar.update(len(files))
    return sorted(images), sorted(texts)


def pair_folder(root: str, progress: bool = False) -> FolderPairs:
    """Pair every image under `root` with its caption file.

    Rule: `x.txt` in the image's own folder wins; otherwise the one `x.txt` anywhere under root. Several
    `x.txt` elsewhere and none beside the image is ambiguous and raises (naming them), rather than
    guessing. One caption file may serve several images of the same stem.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder dataset root {root} is not a directory")
    images, texts = _walk_files(root, progress)
    texts_by_stem: Dict[str, List[str]] = {}
    for text in texts:
        texts_by_stem.setdefault(_stem(os.path.basename(text)), []).append(text)

    pairs, orphan_images, claimed = [], [], set()
    for image in images:
        candidates = texts_by_stem.get(_stem(os.path.basename(image)), [])
        beside = os.path.splitext(image)[0] + TEXT_EXTENSION
        if beside in candidates:
            text = beside
        elif len(candidates) == 1:
            text = candidates[0]
        elif not candidates:
            orphan_images.append(image)
            continue
        else:
            raise ValueError(f"{image}: ambiguous caption file, candidates {candidates}")
        pairs.append((image, text))
        claimed.add(text)
    orphan_texts = [text for text in texts if text not in claimed]
    return FolderPairs(root=root, pairs=pairs, orphan_images=orphan_images, orphan_texts=orphan_texts)


def read_caption_lines(text_path: str) -> List[str]:
    """The non-empty lines of a caption file, each cleaned. Raises TextDecodeError (file and byte) for a file that
    is not UTF-8."""
    # line ends as open()'s universal newlines split them (str.splitlines would also split at \x0c, \u2028, ...,
    # which would renumber the lines a teacher cache is keyed by)
    lines = read_text(text_path).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [clean_caption(line) for line in lines if clean_caption(line)]


@dataclass
class FolderCaptions:
    """The captions of a paired folder as training reads them, and the caption files and lines it leaves out."""
    root: str
    # (image, caption file, its caption lines, the numbers of the lines that hold text): a line keeps its number
    # (the teacher-cache key's #<line>) whichever lines a tokenizer finds no text in
    items: List[Tuple[str, str, List[str], List[int]]]
    orphan_images: List[str]
    orphan_texts: List[str]
    empty: List[str]                          # caption files without a caption line: their images are skipped
    undecodable: List[str]                    # caption files that are not UTF-8: their images are skipped
    textless: List[str]                       # caption files no line of which holds text once tokenized: skipped
    textless_lines: List[str]                 # "<file>#<n>" (n-th non-empty line, from 0) of other lines without text

    def report(self) -> None:
        """Log each kind of left-out file with its count and the first few paths (never dropped silently)."""
        for what, paths in (("images without a caption file, skipped", self.orphan_images),
                            ("caption files without an image, ignored", self.orphan_texts),
                            ("empty caption files, their images skipped", self.empty),
                            ("caption files that are not UTF-8, their images skipped", self.undecodable),
                            ("caption files no line of which holds text once tokenized, their images skipped",
                             self.textless),
                            ("caption lines (file#n: its n-th non-empty line, from 0) that hold no text once "
                             "tokenized, never read", self.textless_lines)):
            if paths:
                logging.warning(f"{self.root}: {len(paths)} {what} (e.g. {', '.join(paths[:_SHOWN])})")


def read_folder_captions(root: str, progress: bool = False,
                         holds_text: Optional[Callable[[str], bool]] = None) -> FolderCaptions:
    """Pair ``root`` and read every caption file: the one rule training and the teacher-cache precompute share.
    An empty or undecodable caption file skips its image (counted by ``FolderCaptions.report``); with
    ``holds_text`` (the tokenizer's empty-caption rule, training_ext.data.skips.TextCheck.holds_text) so does a
    file none of whose lines holds text, and a line without text is never read."""
    pairs = pair_folder(root, progress=progress)
    items, empty, undecodable, textless, textless_lines = [], [], [], [], []
    for image, text in pairs.pairs:
        try:
            captions = read_caption_lines(text)
        except TextDecodeError as error:
            if not undecodable:
                logging.warning(str(error))  # the first one in full: which byte, so the cause can be found
            undecodable.append(text)
            continue
        if not captions:
            empty.append(text)
            continue
        lines = [n for n, caption in enumerate(captions) if holds_text is None or holds_text(caption)]
        if not lines:
            textless.append(text)
            continue
        textless_lines += [f"{text}#{n}" for n in sorted(set(range(len(captions))) - set(lines))]
        items.append((image, text, captions, lines))
    return FolderCaptions(pairs.root, items, pairs.orphan_images, pairs.orphan_texts, empty, undecodable, textless,
                          textless_lines)
