"""Real datasets installed as Debian packages: Fashion-MNIST images and WordNet supersense glosses.

Nothing is downloaded; both loaders read the files the packages install and, by default, look where they put them.

- Fashion-MNIST (Xiao et al., 2017, arXiv 1708.07747), package ``dataset-fashion-mnist``: four IDX files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (60,000 train / 10,000 test 28×28 grey images, 10 classes).
  IDX (LeCun's MNIST format) is a big-endian header -- a 4-byte magic ``0x0000TTDD`` (``TT = 0x08`` unsigned
  bytes, ``DD`` = number of dimensions; so 2051 for images, 2049 for labels), then ``DD`` 4-byte sizes -- followed
  by the raw bytes: pixels from byte 16, labels from byte 8.
- WordNet 3.0 (package ``wordnet-base``): ``data.{noun,verb,adj,adv}``, one synset per line
  ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss`` (``wndb(5WN)``), after a license header whose
  lines begin with two spaces. ``lex_filenum`` names one of the 45 lexicographer files (``lexnames(5WN)``), the
  coarse "supersense" classes (Ciaramita & Johnson, 2003) used here as labels.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from continual.data.datasets import Split

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "WORDNET_DIR", "WORDNET_LEXNAMES", "WORDNET_PARTS",
           "read_idx", "fashion_mnist_files", "load_fashion_mnist", "load_wordnet_supersenses"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
# Label order of the official release (zalandoresearch/fashion-mnist README).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # 0x00000803 / 0x00000801: unsigned bytes, 3 / 1 dimensions

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_PACKAGE = "wordnet-base"
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
# lexnames(5WN) of WordNet 3.0, in file-number order 00..44.
WORDNET_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
# ss_type letters each data file may hold ('s' = adjective satellite) and the lexname prefix of its synsets.
_SS_TYPES = {"noun": ("n",), "verb": ("v",), "adj": ("a", "s"), "adv": ("r",)}
_LEX_PREFIX = {"noun": "noun.", "verb": "verb.", "adj": "adj.", "adv": "adv."}
# Syntactic markers grind appends to some adjectives in data.adj ("galore(ip)"): not part of the lemma.
_ADJ_MARKERS = ("(a)", "(p)", "(ip)")


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzip-compressed or plain, told apart by content) as a uint8 array.

    ``magic`` is the expected magic number (2051 for image files, 2049 for label files); its low byte gives the
    number of dimensions. Raises ``ValueError`` naming the file when the magic differs, a size is zero, or the
    payload is shorter or longer than the sizes say.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; the Debian files are .gz, a user's may be unpacked
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip stream: {err}") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise ValueError(f"{path}: not an IDX file with magic {magic} (found {found})")
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if min(dims) <= 0:
        raise ValueError(f"{path}: IDX sizes {dims} must be positive")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX sizes {dims} need {expected} data bytes, the file has {len(raw) - header} "
                         "(truncated or trailing data)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}; install the Debian package "
                            f"{FASHION_MNIST_PACKAGE} (`apt-get install {FASHION_MNIST_PACKAGE}`) or pass path=")


def fashion_mnist_files(path: str | Path | None = None) -> dict[str, Path]:
    """The four IDX files ``{train,test}_{images,labels}`` -> path in ``path`` (default :data:`FASHION_MNIST_DIR`).

    ``.gz`` files are preferred over plain ones of the same stem. ``FileNotFoundError`` names the Debian package.
    """
    folder = Path(path) if path is not None else FASHION_MNIST_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {folder} not found; install the Debian package "
                                f"{FASHION_MNIST_PACKAGE} (`apt-get install {FASHION_MNIST_PACKAGE}`) or pass path=")
    return {f"{part}_{kind}": _idx_file(folder, f"{prefix}-{kind}-{idx}-ubyte")
            for part, prefix in (("train", "train"), ("test", "t10k"))
            for kind, idx in (("images", "idx3"), ("labels", "idx1"))}


def _fashion_part(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, _IDX_IMAGES)
    labels = read_idx(labels_path, _IDX_LABELS)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images are {images.shape[1:]}, Fashion-MNIST images are (28, 28)")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} "
                         "labels")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels_path}: label {int(labels.max())} is out of range "
                         f"0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels.astype(np.int64)


def load_fashion_mnist(path: str | Path | None = None) -> Split:
    """Fashion-MNIST from the IDX files in ``path`` (default: the ``dataset-fashion-mnist`` package's folder).

    Returns ``Split(x_train (60000, 28, 28) uint8, y_train (60000,) int64, x_test (10000, 28, 28) uint8,
    y_test (10000,) int64)`` for the real set. Unlike the other loaders' float features, images stay raw uint8
    (0 = background): an image encoder does its own resizing and float normalisation. Class names are
    :data:`FASHION_MNIST_CLASSES`. Returned arrays are read-only views of the decoded files.
    """
    files = fashion_mnist_files(path)
    x_train, y_train = _fashion_part(files["train_images"], files["train_labels"])
    x_test, y_test = _fashion_part(files["test_images"], files["test_labels"])
    return Split(x_train, y_train, x_test, y_test)


# --------------------------------------------------------------------------------------------------------- WordNet
def _lexnames(folder: Path) -> tuple[str, ...]:
    """:data:`WORDNET_LEXNAMES`, checked against ``folder/lexnames`` (``NN\\tname\\tcategory`` lines) if present."""
    file = folder / "lexnames"
    if not file.is_file():
        return WORDNET_LEXNAMES  # Debian's wordnet-base ships only the lexnames(5WN) man page
    found = {}
    for line in file.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2:
            found[int(fields[0])] = fields[1]
    if found != dict(enumerate(WORDNET_LEXNAMES)):
        diff = sorted(k for k in set(found) | set(range(len(WORDNET_LEXNAMES)))
                      if found.get(k) != dict(enumerate(WORDNET_LEXNAMES)).get(k))
        raise ValueError(f"{file} disagrees with WordNet 3.0's lexnames at file numbers {diff[:10]}")
    return WORDNET_LEXNAMES


def _parse_data_file(file: Path, part: str, lexnames: Sequence[str]) -> tuple[list[str], list[int]]:
    """``("lemma: gloss" texts, lex file numbers)`` of one ``data.<part>`` file, in file (offset) order."""
    texts, labels = [], []
    with file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.startswith("  ") or not line.strip():
                continue  # license header
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 6:
                raise ValueError(f"{file}:{number}: not a WordNet synset line (no ' | ' gloss or too few fields)")
            try:
                lex = int(fields[1])
            except ValueError:
                raise ValueError(f"{file}:{number}: lex_filenum {fields[1]!r} is not a number") from None
            if fields[2] not in _SS_TYPES[part]:
                raise ValueError(f"{file}:{number}: synset type {fields[2]!r} does not belong in data.{part}")
            if not 0 <= lex < len(lexnames) or not lexnames[lex].startswith(_LEX_PREFIX[part]):
                raise ValueError(f"{file}:{number}: lex_filenum {lex} is not a {_LEX_PREFIX[part]}* lexicographer "
                                 "file")
            lemma = fields[4]
            if part == "adj":
                for marker in _ADJ_MARKERS:
                    lemma = lemma.removesuffix(marker)
            texts.append(f"{lemma.replace('_', ' ')}: {gloss.strip()}")
            labels.append(lex)
    return texts, labels


def _stratified_cap(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """Sorted row indices keeping ``min(count, cap)`` rows of every class, chosen uniformly with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):  # ascending labels, so the draws do not depend on row order
        rows = np.flatnonzero(labels == label)
        keep.append(rows if rows.size <= cap else rng.choice(rows, cap, replace=False))
    return np.sort(np.concatenate(keep))


def load_wordnet_supersenses(path: str | Path | None = None, parts: Sequence[str] = WORDNET_PARTS,
                             max_per_class: int | None = None, seed: int = 0) -> tuple[list[str], np.ndarray,
                                                                                       list[str]]:
    """WordNet synsets as ``(texts, labels, class_names)`` for supersense classification.

    Reads ``data.<part>`` for each of ``parts`` in ``path`` (default: the ``wordnet-base`` package's
    ``/usr/share/wordnet``). Each synset gives the text ``"lemma: gloss"`` -- its first lemma with underscores as
    spaces (and data.adj's ``(a)``/``(p)``/``(ip)`` markers dropped), then the gloss after ``|`` -- and the label
    ``lex_filenum``, which indexes ``class_names``: always all 45 WordNet 3.0 lexicographer file names
    (:data:`WORDNET_LEXNAMES`, checked against ``path/lexnames`` when that file exists), so label ids mean the
    same for any ``parts``; a part subset leaves the other parts' classes empty. WordNet 3.0 has 117,659 synsets,
    all 45 classes occur (smallest noun.motive with 42, largest adj.all with 14,435).

    ``max_per_class`` keeps at most that many synsets of every class, drawn uniformly without replacement with
    ``numpy.random.default_rng(seed)``; smaller classes are kept whole. Rows are in file order (``parts`` order,
    then synset offset) with or without the cap, so the result depends only on the files and arguments.
    """
    folder = Path(path) if path is not None else WORDNET_DIR
    unknown = [p for p in parts if p not in WORDNET_PARTS]
    if unknown or not parts or len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct names from {WORDNET_PARTS}, got {tuple(parts)}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or not isinstance(max_per_class, int | np.integer)
                                      or max_per_class < 1):
        raise ValueError(f"max_per_class must be a positive integer or None, got {max_per_class!r}")
    lexnames = _lexnames(folder)
    texts: list[str] = []
    labels: list[int] = []
    for part in parts:
        file = folder / f"data.{part}"
        if not file.is_file():
            raise FileNotFoundError(f"WordNet file {file} not found; install the Debian package {WORDNET_PACKAGE} "
                                    f"(`apt-get install {WORDNET_PACKAGE}`) or pass path=")
        part_texts, part_labels = _parse_data_file(file, part, lexnames)
        texts += part_texts
        labels += part_labels
    y = np.asarray(labels, dtype=np.int64)
    if max_per_class is not None:
        keep = _stratified_cap(y, int(max_per_class), seed)
        texts, y = [texts[i] for i in keep], y[keep]
    return texts, y, list(lexnames)
