"""continual.data.real: IDX and WordNet readers on tiny generated files, and on the Debian packages' files."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from continual.data import FASHION_MNIST_CLASSES, WORDNET_LEXNAMES, load_fashion_mnist, load_wordnet_supersenses
from continual.data.real import FASHION_MNIST_DIR, WORDNET_DIR, read_idx

IMAGES, LABELS = 2051, 2049


def write_idx(path: Path, magic: int, array: np.ndarray, dims: tuple[int, ...] | None = None,
              compress: bool = True) -> Path:
    """An IDX file of ``array`` (uint8); ``dims`` overrides the header sizes to build inconsistent files."""
    array = np.asarray(array, np.uint8)
    dims = array.shape if dims is None else dims
    raw = struct.pack(f">I{len(dims)}I", magic, *dims) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_fashion(folder: Path, n_train: int = 12, n_test: int = 5, compress: bool = True, seed: int = 0,
                  ) -> tuple[np.ndarray, ...]:
    """A Fashion-MNIST folder with random images; returns ``(x_train, y_train, x_test, y_test)``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", IMAGES, x, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", LABELS, y, compress=compress)
        out += [x, y]
    return tuple(out)


# ------------------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    x = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    got = read_idx(write_idx(tmp_path / "im", IMAGES, x, compress=compress), IMAGES)
    assert got.dtype == np.uint8 and got.shape == (3, 28, 28)
    np.testing.assert_array_equal(got, x)
    labels = read_idx(write_idx(tmp_path / "lb", LABELS, [7, 0, 9], compress=compress), LABELS)
    np.testing.assert_array_equal(labels, [7, 0, 9])


@pytest.mark.parametrize("compress", [True, False])
def test_load_fashion_mnist_tiny(tmp_path: Path, compress: bool) -> None:
    x_tr, y_tr, x_te, y_te = write_fashion(tmp_path, compress=compress)
    split = load_fashion_mnist(tmp_path)
    for got, want in zip(split, (x_tr, y_tr, x_te, y_te)):
        np.testing.assert_array_equal(got, want)
    assert split.x_train.dtype == np.uint8 and split.y_train.dtype == np.int64 and split.y_test.dtype == np.int64


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    x = np.zeros((2, 28, 28), np.uint8)
    bad_magic = write_idx(tmp_path / "magic", 2052, x)
    with pytest.raises(ValueError, match=r"magic.*magic 2051 \(found 2052\)"):
        read_idx(bad_magic, IMAGES)
    truncated = write_idx(tmp_path / "truncated", IMAGES, x, dims=(3, 28, 28))
    with pytest.raises(ValueError, match="truncated.*need 2352 data bytes, the file has 1568"):
        read_idx(truncated, IMAGES)
    trailing = write_idx(tmp_path / "trailing", IMAGES, x, dims=(1, 28, 28))
    with pytest.raises(ValueError, match="trailing"):
        read_idx(trailing, IMAGES)
    short_header = tmp_path / "header"
    short_header.write_bytes(struct.pack(">II", IMAGES, 2))
    with pytest.raises(ValueError, match="header.*truncated IDX header"):
        read_idx(short_header, IMAGES)
    zero = write_idx(tmp_path / "zero", LABELS, np.zeros(0), dims=(0,))
    with pytest.raises(ValueError, match="zero.*must be positive"):
        read_idx(zero, LABELS)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(gzip.compress(b"\x00" * 100)[:20])
    with pytest.raises(ValueError, match="broken.gz: corrupt gzip"):
        read_idx(broken_gz, IMAGES)


def test_fashion_errors(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, LABELS, np.zeros(11))  # 12 images, 11 labels
    with pytest.raises(ValueError, match="holds 12 images but .*train-labels-idx1-ubyte.gz holds 11 labels"):
        load_fashion_mnist(tmp_path)
    write_idx(labels, LABELS, np.full(12, 10))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 is out of range 0\.\.9"):
        load_fashion_mnist(tmp_path)
    write_idx(labels, LABELS, np.zeros(12))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", IMAGES, np.zeros((5, 28, 27)))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: images are \(28, 27\)"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")


def _independent_idx(path: Path) -> np.ndarray:
    """A second, minimal IDX parser (struct + gzip.open) to check the loader against."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic, = struct.unpack(">I", raw[:4])
    dims = struct.unpack(f">{magic & 0xFF}I", raw[4:4 + 4 * (magic & 0xFF)])
    return np.frombuffer(raw[4 + 4 * len(dims):], np.uint8).reshape(dims)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    split = load_fashion_mnist()
    assert split.x_train.shape == (60000, 28, 28) and split.x_test.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(split.y_train), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(split.y_test), np.full(10, 1000))
    for got, stem in zip(split, ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")):
        np.testing.assert_array_equal(got, _independent_idx(FASHION_MNIST_DIR / f"{stem}-ubyte.gz"))
    # Published facts: the first labels of each split, and the mean pixel 0.2860 (the usual normalisation).
    np.testing.assert_array_equal(split.y_train[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    np.testing.assert_array_equal(split.y_test[:10], [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
    assert abs(split.x_train.mean() / 255 - 0.2860) < 5e-5
    assert int(split.x_train.sum(dtype=np.int64)) == 3431114169  # measured once; pins the installed files
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


# --------------------------------------------------------------------------------------------------- WordNet
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2   \n"
SYNSETS = {
    "noun": ["00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 | that which is "
             "perceived or known  ",
             "00002137 03 n 02 abstraction 0 abstract_entity 0 001 ~ 00023100 n 0000 | a general concept  ",
             "00012345 16 n 01 life_goal 0 000 | a goal | kept whole  ",
             "00012346 18 n 01 person 0 000 | a human being  ",
             "00012347 18 n 01 someone 0 000 | a person  ",
             "00012348 18 n 01 somebody 0 000 | a person of any kind  ",
             "00012349 18 n 01 mortal 0 000 | a mortal human  ",
             "00012350 18 n 01 soul 0 000 | a person's soul  "],
    "verb": ["00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 001 * 00005041 v 0000 02 + 02 00 + 08 00 "
             "| draw air into, and expel out of, the lungs  "],
    "adj": ["00001740 00 a 01 able 0 001 ! 00002098 a 0101 | having the necessary means  ",
            "00003356 00 s 01 galore(ip) 0 001 & 00003130 a 0000 | in great numbers  ",
            "00004000 44 a 01 used_to(p) 0 000 | in the habit  "],
    "adv": ["00001740 02 r 01 a_cappella 0 000 | without musical accompaniment  "],
}


def write_wordnet(folder: Path, synsets: dict[str, list[str]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, lines in (SYNSETS if synsets is None else synsets).items():
        (folder / f"data.{part}").write_text(HEADER + "".join(line + "\n" for line in lines))
    return folder


def test_wordnet_parsing(tmp_path: Path) -> None:
    texts, labels, names = load_wordnet_supersenses(write_wordnet(tmp_path))
    assert names == list(WORDNET_LEXNAMES) and len(names) == 45
    assert labels.dtype == np.int64 and len(texts) == len(labels) == 13
    assert texts[0] == "entity: that which is perceived or known"
    assert texts[2] == "life goal: a goal | kept whole"  # only the first ' | ' ends the pointers
    assert texts[8] == "breathe: draw air into, and expel out of, the lungs"
    assert texts[10:12] == ["galore: in great numbers", "used to: in the habit"]  # adjective markers dropped
    assert texts[12] == "a cappella: without musical accompaniment"
    np.testing.assert_array_equal(labels, [3, 3, 16, 18, 18, 18, 18, 18, 29, 0, 0, 44, 2])
    assert [names[i] for i in labels[[0, 2, 8, 11, 12]]] == ["noun.Tops", "noun.motive", "verb.body", "adj.ppl",
                                                              "adv.all"]
    verbs, verb_labels, _ = load_wordnet_supersenses(tmp_path, parts=("verb",))
    assert verbs == [texts[8]] and verb_labels.tolist() == [29]


def test_wordnet_cap_is_deterministic_and_stratified(tmp_path: Path) -> None:
    texts, labels, _ = load_wordnet_supersenses(write_wordnet(tmp_path))
    capped, capped_labels, _ = load_wordnet_supersenses(tmp_path, max_per_class=2, seed=3)
    counts = np.bincount(labels, minlength=45)
    np.testing.assert_array_equal(np.bincount(capped_labels, minlength=45), np.minimum(counts, 2))
    positions = [texts.index(t) for t in capped]
    assert positions == sorted(positions)  # a file-order subsequence
    again = load_wordnet_supersenses(tmp_path, max_per_class=2, seed=3)
    assert again[0] == capped and np.array_equal(again[1], capped_labels)
    person = WORDNET_LEXNAMES.index("noun.person")
    chosen = set()
    for seed in range(10):
        seed_texts, seed_labels, _ = load_wordnet_supersenses(tmp_path, max_per_class=2, seed=seed)
        chosen.add(tuple(t for t, label in zip(seed_texts, seed_labels) if label == person))
    assert len(chosen) > 1  # the seed does pick among noun.person's five synsets
    uncapped = load_wordnet_supersenses(tmp_path, max_per_class=5)
    assert uncapped[0] == texts


def test_wordnet_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.noun.*apt-get install wordnet-base"):
        load_wordnet_supersenses(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="parts"):
        load_wordnet_supersenses(tmp_path, parts=("nouns",))
    with pytest.raises(ValueError, match="max_per_class"):
        load_wordnet_supersenses(tmp_path, max_per_class=0)
    bad = {"noun": ["00001740 00 n 01 entity 0 000 | x  "]}
    with pytest.raises(ValueError, match=r"data.noun:3: lex_filenum 0 is not a noun.\* lexicographer file"):
        load_wordnet_supersenses(write_wordnet(tmp_path / "a", bad), parts=("noun",))
    bad = {"noun": ["00001740 03 v 01 entity 0 000 | x  "]}
    with pytest.raises(ValueError, match="data.noun:3: synset type 'v'"):
        load_wordnet_supersenses(write_wordnet(tmp_path / "b", bad), parts=("noun",))
    bad = {"noun": ["00001740 03 n 01 entity 0 000 no gloss  "]}
    with pytest.raises(ValueError, match="data.noun:3: not a WordNet synset line"):
        load_wordnet_supersenses(write_wordnet(tmp_path / "c", bad), parts=("noun",))


def test_wordnet_lexnames_file_is_checked(tmp_path: Path) -> None:
    folder = write_wordnet(tmp_path)
    lexnames = folder / "lexnames"
    lexnames.write_text("".join(f"{i:02d}\t{name}\t{1}\n" for i, name in enumerate(WORDNET_LEXNAMES)))
    assert load_wordnet_supersenses(folder)[2] == list(WORDNET_LEXNAMES)
    lexnames.write_text(lexnames.read_text().replace("noun.motive", "noun.goal"))
    with pytest.raises(ValueError, match=re.escape("disagrees with WordNet 3.0's lexnames at file numbers [16]")):
        load_wordnet_supersenses(folder)


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="Debian package wordnet-base is not installed")
def test_real_wordnet() -> None:
    texts, labels, names = load_wordnet_supersenses()
    counts = np.bincount(labels, minlength=45)
    assert len(texts) == 117659 and len(names) == 45
    assert (counts > 0).all()  # all 45 classes occur, adj.ppl included (60 synsets)
    assert counts.min() == 42 and names[int(counts.argmin())] == "noun.motive"
    assert counts.max() == 14435 and names[int(counts.argmax())] == "adj.all"
    assert counts[WORDNET_LEXNAMES.index("adj.ppl")] == 60
    assert texts[0].startswith("entity: that which is perceived or known or inferred")
    capped, capped_labels, _ = load_wordnet_supersenses(max_per_class=100, seed=1)
    np.testing.assert_array_equal(np.bincount(capped_labels, minlength=45), np.minimum(counts, 100))
    assert len(capped) == int(np.minimum(counts, 100).sum()) == 4334
