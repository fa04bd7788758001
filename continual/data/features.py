"""Frozen-encoder features of the real datasets, computed once and cached on disk.

- :func:`encode_texts`: all-MiniLM-L6-v2 sentence embeddings (``BertModel.encode``: masked mean, L2-normalised).
- :func:`encode_images`: EfficientNet-Lite0 pooled features (``model.features``) of uint8 images.
- :func:`cached_features`: an ``.npz`` cache (``save_feature_file``/``load_feature_file``) keyed by a hash of
  everything the features depend on, written atomically and recomputed (with a warning) when unreadable.
- :func:`fashion_mnist_features`, :func:`wordnet_features`: the two datasets of ``continual.data.real`` through
  the cache.

Both encoders run one jitted function on a fixed set of input shapes so XLA compiles a handful of programs, not
one per batch: every batch has ``batch_size`` rows (the last one zero-padded; fewer inputs than that use the
next power of two) and token batches are padded to a length bucket (16, 24, 32, 48, ..., and ``max_length``).
Padding cannot change a result: padded tokens are masked out of attention and pooling, and padded rows are
dropped (both encoders treat rows independently). Only the summation order inside XLA may differ.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util
from tqdm.auto import tqdm

from continual.data.datasets import Split
from continual.data.loaders import load_feature_file, save_feature_file
from continual.data.real import fashion_mnist_files, load_fashion_mnist, load_wordnet_supersenses

__all__ = ["FEATURES_VERSION", "length_buckets", "encode_texts", "encode_images", "default_cache_dir", "cache_path",
           "cached_features", "file_sha256", "fashion_mnist_features", "wordnet_features"]

# Bump when a change here alters computed features, so existing cache files stop matching.
FEATURES_VERSION = 1

Subset = int | Sequence[int] | np.ndarray | None


# ------------------------------------------------------------------------------------------------------ encoders
def _row_bucket(n: int, batch_size: int) -> int:
    """Rows per jitted call: ``batch_size``, or the next power of two >= ``n`` when fewer inputs than that."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(min(batch_size, 1 << max(n - 1, 0).bit_length()))


def length_buckets(max_length: int) -> list[int]:
    """Token lengths batches are padded to: 16, 24, 32, 48, 64, 96, ... below ``max_length``, then ``max_length``.

    Powers of two and their midpoints waste at most a third of a padded batch (a quarter on average) for
    about two compilations per doubling of the length, each a few seconds on CPU.
    """
    buckets, length = [], 16
    while length < max_length:
        buckets += [b for b in (length, length * 3 // 2) if b < max_length]
        length *= 2
    return [*buckets, max_length]


@functools.partial(jax.jit, static_argnums=0)
def _bert_encode(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).encode(ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _image_features(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).features(x)


@functools.lru_cache(maxsize=1)
def _minilm() -> tuple[nnx.Module, Any]:
    from peft_probe.tokenizer import bert_tokenizer
    from peft_probe.weights import load_safetensors

    return load_safetensors()[1], bert_tokenizer()


def encode_texts(texts: Sequence[str], batch_size: int = 256, max_length: int = 128, model: nnx.Module | None = None,
                 tokenizer: Any = None, progress: bool = True) -> np.ndarray:
    """Sentence embeddings ``(len(texts), hidden)`` float32 (hidden = 384 for the default all-MiniLM-L6-v2).

    ``model`` is a ``peft_probe.models.bert.BertModel`` and ``tokenizer`` its WordPiece tokenizer; each default
    is the bundled all-MiniLM-L6-v2 (loaded once per process). Texts are truncated to ``max_length`` tokens
    ([CLS] and [SEP] included), sorted by token count so each batch pads little, and returned in input order.
    """
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings")
    if model is None or tokenizer is None:
        default_model, default_tokenizer = _minilm()
        model = default_model if model is None else model
        tokenizer = default_tokenizer if tokenizer is None else tokenizer
    limit = model.config.max_position_embeddings
    if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer) or not 2 <= max_length <= limit:
        raise ValueError(f"max_length must be an integer in 2..{limit} (the model's positions), got {max_length!r}")
    rows = _row_bucket(len(texts), batch_size)
    if not texts:
        return np.zeros((0, model.config.hidden_size), np.float32)
    ids = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    lengths = np.array([len(row) for row in ids])
    order = np.argsort(lengths, kind="stable")
    buckets = np.array(length_buckets(int(max_length)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    graphdef, state = nnx.split(model)
    out = np.empty((len(texts), model.config.hidden_size), np.float32)
    with tqdm(total=len(texts), desc="encode_texts", unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), rows):
            chosen = order[start:start + rows]
            width = int(buckets[np.searchsorted(buckets, lengths[chosen].max())])
            batch = np.full((rows, width), pad_id, np.int32)
            mask = np.zeros((rows, width), np.int32)  # all-zero rows (padding) pool to 0 and are dropped
            for r, i in enumerate(chosen):
                batch[r, :lengths[i]] = ids[i]
                mask[r, :lengths[i]] = 1
            out[chosen] = np.asarray(_bert_encode(graphdef, state, batch, mask))[:len(chosen)]
            bar.update(len(chosen))
    return out


@functools.lru_cache(maxsize=1)
def _efficientnet() -> nnx.Module:
    from peft_probe.weights import load_efficientnet_lite0  # written separately; imported only when needed

    return load_efficientnet_lite0()[1]


def encode_images(images_u8: np.ndarray, encoder: str = "efficientnet-lite0", size: int = 64, batch_size: int = 256,
                  progress: bool = True, *, model: nnx.Module | None = None,
                  preprocess: Callable[[np.ndarray, int], Any] | None = None) -> np.ndarray:
    """Image features ``(n, d)`` float32 (d = 1280 for EfficientNet-Lite0) of uint8 images ``(n, H, W[, C])``.

    ``preprocess(images_u8, size)`` turns a batch into normalised NHWC float32 input (default
    ``peft_probe.models.efficientnet.preprocess``) and runs eagerly per batch; ``model.features`` (default: the
    ``encoder``, whose only value is ``"efficientnet-lite0"``, loaded once per process) runs jitted on batches of
    fixed shape. Any nnx module with a ``features`` method that maps rows independently (inference-mode batch
    norm) may be passed.
    """
    images = np.asarray(images_u8)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or not len(images):
        raise ValueError(f"images_u8 must be non-empty uint8 (n, H, W) or (n, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    rows = _row_bucket(len(images), batch_size)
    if model is None:
        if encoder != "efficientnet-lite0":
            raise ValueError(f"unknown encoder {encoder!r}; the bundled one is 'efficientnet-lite0' (or pass model=)")
        model = _efficientnet()
    if preprocess is None:
        from peft_probe.models.efficientnet import preprocess
    graphdef, state = nnx.split(model)
    parts = []
    with tqdm(total=len(images), desc="encode_images", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), rows):
            real = len(images[start:start + rows])
            x = np.asarray(preprocess(images[start:start + rows], size), np.float32)
            if x.ndim != 4 or x.shape[0] != real:
                raise ValueError(f"preprocess returned shape {x.shape} for {real} images; expected (n, H, W, C)")
            if real < rows:
                x = np.concatenate([x, np.zeros((rows - real, *x.shape[1:]), np.float32)])
            parts.append(np.asarray(_image_features(graphdef, state, x), np.float32)[:real])
            bar.update(real)
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------------------------- cache
def default_cache_dir() -> Path:
    """``$ANALYTIC_CACHE`` if set (the folder the ``.npz`` files go in), else
    ``~/.cache/analytic-learning/features``."""
    env = os.environ.get("ANALYTIC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "analytic-learning" / "features"


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # index arrays and the like: identified by content, not spelled out
        return {"ndarray_sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                "shape": list(value.shape), "dtype": str(value.dtype)}
    raise TypeError(f"cache key value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _canonical(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=_json_default, allow_nan=False)


def cache_path(name: str, key: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """``cache_dir/<name>-<16 hex digits of sha256(canonical JSON of key)>.npz``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"cache name {name!r} must be letters, digits, '.', '_' or '-'")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{name}-{hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]}.npz"


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file in ``path``'s folder, flush it to disk, then rename it over ``path``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a cache is fine to share read-only
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)


def cached_features(name: str, compute: Callable[[], Split], key: dict[str, Any],
                    cache_dir: str | Path | None = None) -> Split:
    """``compute()``'s split, stored in and then read from :func:`cache_path` ``(name, key, cache_dir)``.

    ``key`` must name everything the features depend on (encoder and weights identity, data identity,
    preprocessing, subset, code version); any JSON value, ``Path``, NumPy scalar or array (hashed by content)
    is accepted. A cache file that ``load_feature_file`` rejects is recomputed with a ``RuntimeWarning``. The
    split is written to a temporary file, validated by reading it back, and renamed into place, so an interrupted
    run leaves no partial cache file; a ``<file>.json`` beside it records the key for humans (never read back).
    """
    path = cache_path(name, key, cache_dir)
    if path.exists():
        try:
            return load_feature_file(path)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            warnings.warn(f"feature cache {path} is unreadable ({type(err).__name__}: {err}); recomputing",
                          RuntimeWarning, stacklevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)  # before computing: an unwritable folder fails fast
    split = compute()
    checked: list[Split] = []

    def write(tmp: Path) -> None:
        save_feature_file(tmp, split)
        checked.append(load_feature_file(tmp))  # refuse to cache what could not be read back

    _replace_atomically(path, write)
    text = json.dumps(json.loads(_canonical(key)), indent=1, sort_keys=True)
    _replace_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n"))
    return checked[0]


# ----------------------------------------------------------------------------------------------- identity of inputs
@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised per (path, size, mtime) within the process."""
    stat = Path(path).stat()
    return _sha256_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _params_sha256(model: nnx.Module) -> str:
    """Content hash of a module's class and parameter arrays (for caller-supplied models without a file)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    for path in sorted(flat, key=lambda p: tuple(map(str, p))):
        array = np.asarray(flat[path])
        digest.update(f"{'/'.join(map(str, path))}{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _efficientnet_weights() -> dict[str, str]:
    """sha256 of the checkpoint the bundled EfficientNet-Lite0 is read from (located without importing torch)."""
    from peft_probe.weights import efficientnet_lite0_path

    path = efficientnet_lite0_path()
    return {path.name: file_sha256(path)}


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        project = version("analytic-learning")
    except PackageNotFoundError:
        project = "unknown"
    return {"features_version": FEATURES_VERSION, "analytic_learning": project, "jax": jax.__version__}


def _subset_key(subset: Subset) -> Any:
    if subset is None:
        return "all"
    if isinstance(subset, int | np.integer) and not isinstance(subset, bool):
        if subset < 1:
            raise ValueError(f"a subset size must be positive, got {subset}")
        return {"first": int(subset)}
    indices = np.asarray(subset)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or not indices.size or indices.min() < 0:
        raise ValueError("a subset must be None, a positive int or a non-empty 1-D array of non-negative indices")
    return {"indices": indices.astype(np.int64)}


def _take(x: np.ndarray, y: np.ndarray, subset: Subset, part: str) -> tuple[np.ndarray, np.ndarray]:
    if subset is None:
        return x, y
    index = np.arange(int(subset)) if isinstance(subset, int | np.integer) else np.asarray(subset, np.int64)
    if index.max() >= len(y):
        raise ValueError(f"{part} subset asks for row {int(index.max())}, the {part} split has {len(y)} rows")
    return x[index], y[index]


# ------------------------------------------------------------------------------------------------------ datasets
def fashion_mnist_features(size: int = 64, train: Subset = None, test: Subset = None,
                           cache_dir: str | Path | None = None, *, path: str | Path | None = None,
                           batch_size: int = 256, progress: bool = True, model: nnx.Module | None = None,
                           preprocess: Callable[[np.ndarray, int], Any] | None = None) -> Split:
    """Cached EfficientNet-Lite0 features of Fashion-MNIST: ``Split`` of ``(n, 1280)`` float32 and int64 labels.

    Images are resized to ``size``×``size`` by the preprocessing. ``train``/``test`` select rows of each split:
    ``None`` = all, an int ``n`` = the first ``n``, or an index array (in that order). Labels are the original
    0..9 (:data:`continual.data.real.FASHION_MNIST_CLASSES`). The cache key holds the IDX files' and weights'
    sha256, ``size``, the subsets and code versions; ``model``/``preprocess`` (see :func:`encode_images`)
    replace the bundled encoder and are then identified by a parameter hash and the function's qualified name.
    """
    if model is None:
        encoder: dict[str, Any] = {"name": "efficientnet-lite0", "weights_sha256": _efficientnet_weights()}
    else:
        encoder = {"name": type(model).__qualname__, "params_sha256": _params_sha256(model)}
    if preprocess is not None:
        encoder["preprocess"] = f"{preprocess.__module__}.{preprocess.__qualname__}"
    data = {k: file_sha256(p) for k, p in fashion_mnist_files(path).items()}
    key = {"dataset": "fashion-mnist", "data_sha256": data, "encoder": encoder, "size": int(size),
           "train": _subset_key(train), "test": _subset_key(test), **_versions()}

    def compute() -> Split:
        raw = load_fashion_mnist(path)
        x_tr, y_tr = _take(raw.x_train, raw.y_train, train, "train")
        x_te, y_te = _take(raw.x_test, raw.y_test, test, "test")
        run = functools.partial(encode_images, size=size, batch_size=batch_size, progress=progress, model=model,
                                preprocess=preprocess)
        return Split(run(x_tr), y_tr, run(x_te), y_te)

    return cached_features(f"fashion-mnist-{size}", compute, key, cache_dir)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices: ``round(test_fraction * count)`` test rows per class, at least one
    train row (a single-row class is train only), chosen with ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(round(test_fraction * rows.size), rows.size - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def wordnet_features(max_per_class: int | None = None, test_fraction: float = 0.2, seed: int = 0,
                     cache_dir: str | Path | None = None, *, path: str | Path | None = None, max_length: int = 128,
                     batch_size: int = 256, progress: bool = True) -> tuple[Split, list[str]]:
    """Cached MiniLM embeddings of WordNet supersense texts: ``(Split of (n, 384) float32, class_names)``.

    Texts, labels and ``class_names`` are :func:`continual.data.real.load_wordnet_supersenses` ``(path,
    max_per_class=max_per_class, seed=seed)``; they are split per class into train and test with
    ``test_fraction`` of every class (rounded; at least one train row) in test, drawn with ``seed``, rows kept in
    file order. The cache key holds a hash of the texts and labels themselves, the MiniLM files' sha256,
    ``max_length`` and code versions.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    texts, labels, class_names = load_wordnet_supersenses(path, max_per_class=max_per_class, seed=seed)
    train, test = _stratified_split(labels, test_fraction, seed)
    from peft_probe.weights import minilm_dir

    folder = minilm_dir()
    weights = {n: file_sha256(folder / n) for n in ("model.safetensors", "config.json", "tokenizer.json")}
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    key = {"dataset": "wordnet-supersenses", "texts_sha256": digest, "labels": labels, "train": train,
           "encoder": {"name": "all-MiniLM-L6-v2", "files_sha256": weights}, "max_length": int(max_length),
           **_versions()}

    def compute() -> Split:
        x = encode_texts(texts, batch_size=batch_size, max_length=max_length, progress=progress)
        return Split(x[train], labels[train], x[test], labels[test])

    name = "wordnet-all" if max_per_class is None else f"wordnet-cap{int(max_per_class)}"
    return cached_features(name, compute, key, cache_dir), class_names
