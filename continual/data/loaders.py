"""Loaders for data on disk: CIFAR-100 python batches, ImageNet-style image folders and ``.npz`` feature files.

Nothing is downloaded. The formats are the public ones:

- CIFAR-100 "python version" (``cifar-100-python/``): pickled dicts in files ``train`` and ``test`` with ``data``
  ``(n, 3072)`` uint8 (channel-major 3×32×32 rows) and ``fine_labels`` (plus ``coarse_labels``); the official
  files were pickled by Python 2, so keys may be ``bytes`` and are read with ``encoding="bytes"``. They are read
  with a restricted unpickler (:class:`CifarUnpickler`) that can only rebuild numpy arrays and dtypes, so a crafted
  batch file cannot run code.
- Image folders (ImageNet/``torchvision.datasets.ImageFolder`` layout): ``root/<class_name>/<image file>``, class
  ids given by sorted class-folder names.
- Feature files: ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test`` -- what a user writes after running
  a pretrained backbone once (e.g. ViT class tokens of CIFAR-100) so learners and benchmarks need no model.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from continual.data.datasets import Split

__all__ = ["CifarUnpickler", "load_cifar100", "list_image_folder", "load_image_folder", "load_feature_file",
           "save_feature_file"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def _numpy_core() -> Any:
    # numpy >= 2 moved numpy.core to numpy._core (the old name warns); old and new pickles name either one.
    return getattr(np, "_core", None) or np.core


class CifarUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR python batches: dicts of lists and numpy arrays, nothing else.

    ``find_class`` resolves only the globals numpy arrays need (``numpy.ndarray``, ``numpy.dtype``, the array
    reconstructors ``_reconstruct``/``_frombuffer`` under ``numpy.core`` or ``numpy._core``, and ``_codecs.encode``
    which Python 3 protocol-2 pickles use for raw bytes); any other global (``os.system``, ``builtins.eval``, ...)
    raises :class:`pickle.UnpicklingError` before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        core = _numpy_core()
        allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
        for prefix in ("numpy.core", "numpy._core"):
            allowed[(f"{prefix}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
            allowed[(f"{prefix}.numeric", "_frombuffer")] = core.numeric._frombuffer
        import codecs

        allowed[("_codecs", "encode")] = codecs.encode
        found = allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR batch holds only "
                                         "numpy arrays, lists and dicts")
        return found


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-100 batch file not found: {path}")
    try:
        with path.open("rb") as fh:
            raw = CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise ValueError(f"{path} is not a readable CIFAR-100 python batch: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a CIFAR-100 python batch: it holds a {type(raw).__name__}, not a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if "data" not in batch or "fine_labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-100 python batch: keys {sorted(batch)} lack 'data'/'fine_labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: data has shape {data.shape} for {labels.shape[0]} labels; expected (n, 3072)")
    # Rows are channel-major (1024 R, 1024 G, 1024 B); return NHWC images.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar100(root: str | Path) -> Split:
    """CIFAR-100 from the python-pickle batches in ``root`` (the ``cifar-100-python`` folder).

    Returns uint8 images ``(n, 32, 32, 3)`` with fine labels 0..99 (50000 train / 10000 test for the real set).
    """
    root = Path(root)
    x_train, y_train = _cifar_batch(root / "train")
    x_test, y_test = _cifar_batch(root / "test")
    return Split(x_train, y_train, x_test, y_test)


def list_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """``(paths, labels, class_names)`` of an ImageFolder tree; labels index the sorted class-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not class_names:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class_name>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ValueError(f"{root} holds no image files with suffixes {IMAGE_SUFFIXES}")
    return paths, np.asarray(labels, dtype=np.int64), class_names


def load_image_folder(root: str | Path, size: tuple[int, int] | None = (224, 224)) -> tuple[np.ndarray, np.ndarray,
                                                                                             list[str]]:
    """Decode an ImageFolder tree into ``(images (n, H, W, 3) uint8, labels (n,), class_names)``.

    Every image is converted to RGB and resized to ``size = (H, W)`` (bilinear); ``size=None`` keeps the sizes,
    which must then agree. For ImageNet-scale folders use :func:`list_image_folder` and decode in chunks.
    """
    from PIL import Image

    paths, labels, class_names = list_image_folder(root)
    images = []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images under {root} have different sizes {sorted(shapes)}; pass size=(H, W)")
    return np.stack(images), labels, class_names


_FEATURE_KEYS = ("x_train", "y_train", "x_test", "y_test")


def save_feature_file(path: str | Path, split: Split) -> Path:
    """Write ``split`` as an ``.npz`` feature file (:func:`load_feature_file` reads it back)."""
    path = Path(path)
    np.savez(path, **dict(zip(_FEATURE_KEYS, split)))
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_feature_file(path: str | Path) -> Split:
    """Read ``x_train, y_train, x_test, y_test`` from an ``.npz`` file and check shapes, dtypes and finiteness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in _FEATURE_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path} lacks arrays {missing}; it holds {sorted(data.files)}")
        arrays = {k: data[k] for k in _FEATURE_KEYS}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{path}: x_{part} must be a 2-D float array, got shape {x.shape} dtype {x.dtype}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise ValueError(f"{path}: y_{part} must be (n,) non-negative ints for x_{part} {x.shape}, "
                             f"got shape {y.shape} dtype {y.dtype}")
        if not np.isfinite(x).all():
            raise ValueError(f"{path}: x_{part} contains NaN/inf")
    if arrays["x_train"].shape[1] != arrays["x_test"].shape[1]:
        raise ValueError(f"{path}: x_train width {arrays['x_train'].shape[1]} != x_test width "
                         f"{arrays['x_test'].shape[1]}")
    return Split(arrays["x_train"], arrays["y_train"].astype(np.int64), arrays["x_test"],
                 arrays["y_test"].astype(np.int64))
