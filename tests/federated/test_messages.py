"""Message types: the transport dict round-trips exactly, sizes are counted, malformed dicts are refused."""

from __future__ import annotations

import numpy as np
import pytest

from federated import messages as m

RNG = np.random.default_rng(0)
EXAMPLES = [
    m.AFLUpload(3, RNG.standard_normal((4, 4)), RNG.standard_normal((4, 2)), 17, 1.0),
    m.AFLBroadcast(RNG.standard_normal((4, 2)).astype(np.float32), 100, 0.0),
    m.DeepAFLSetup(7, 40, 10, 64, 32, 5, 1.0, 0.05, "gelu", "tanh"),
    m.DeepAFLClassifierUpload(1, 2, RNG.standard_normal((5, 5)), RNG.standard_normal((5, 3)), 9),
    m.DeepAFLBlockUpload(1, 2, RNG.standard_normal((6, 6)), RNG.standard_normal((6, 3)), 9),
    m.DeepAFLClassifierBroadcast(2, RNG.standard_normal((5, 3))),
    m.DeepAFLBlockBroadcast(2, RNG.standard_normal((6, 5))),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda x: type(x).__name__)
def test_to_arrays_from_arrays_round_trip_is_exact(message):
    wire = message.to_arrays()
    assert wire["kind"] == message.kind
    assert all(isinstance(v, (np.ndarray, int, float, str)) for v in wire.values())
    back = m.from_arrays(wire)
    assert type(back) is type(message)
    for name, value in vars(message).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(back, name), value)
            assert getattr(back, name).dtype == value.dtype
        else:
            assert getattr(back, name) == value and type(getattr(back, name)) is type(value)


def test_round_trip_through_npz_file(tmp_path):
    upload = EXAMPLES[0]
    np.savez(tmp_path / "u.npz", **upload.to_arrays())
    with np.load(tmp_path / "u.npz") as f:
        back = m.from_arrays({k: f[k] for k in f.files})
    assert back.client_id == 3 and isinstance(back.client_id, int) and back.gamma == 1.0
    np.testing.assert_array_equal(back.xtx, upload.xtx)


def test_nbytes_counts_arrays_and_scalars():
    upload = EXAMPLES[0]
    assert upload.nbytes == 8 * (16 + 8) + 8 * 3
    assert EXAMPLES[1].nbytes == 4 * 8 + 8 * 2
    assert EXAMPLES[2].nbytes == 8 * 10


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        EXAMPLES[0].count = 5


def test_malformed_transport_dicts_are_refused_by_name():
    wire = EXAMPLES[0].to_arrays()
    del wire["xty"]
    with pytest.raises(ValueError, match="missing field.*xty"):
        m.from_arrays(wire)
    with pytest.raises(ValueError, match="unknown kind"):
        m.from_arrays({"kind": "gradient"})
    with pytest.raises(ValueError, match="kind"):
        m.from_arrays({"xtx": 1})
    with pytest.raises(ValueError, match="expected 'afl_upload'"):
        m.AFLUpload.from_arrays(EXAMPLES[3].to_arrays())
    with pytest.raises(TypeError, match="mapping"):
        m.AFLUpload.from_arrays([1, 2])
