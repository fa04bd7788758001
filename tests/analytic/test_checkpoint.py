import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from analytic import CheckpointError, RandomBuffer, gram_init, load_state, rls_init, save_state

_STREAM = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from analytic import RandomBuffer, load_state, rls_init, rls_update, save_state
    mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 10)); y = np.sort(rng.integers(0, 6, 400))
    buf = RandomBuffer(10, 64, "relu", seed=3)
    batches = np.array_split(np.arange(400), 8)
    if mode == "first_half":
        state = rls_init(64, 0, 0.5)
        for b in batches[:4]:
            state = rls_update(state, buf(x[b]), y[b])
        save_state(path, {"head": state, "buffer": buf}, {"batches_done": 4})
        sys.exit(0)
    if mode == "resume":
        tree, meta = load_state(path)
        state, buf = tree["head"], tree["buffer"]
        start = meta["batches_done"]
    else:
        state, start = rls_init(64, 0, 0.5), 0
    for b in batches[start:]:
        state = rls_update(state, buf(x[b]), y[b])
    np.save(out, np.asarray(state.weight))
""")


def _run(*args: str) -> None:
    out = subprocess.run([sys.executable, "-c", _STREAM, *args], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]


def test_save_midstream_load_in_new_process_continue_is_bit_identical(tmp_path: Path):
    ckpt = tmp_path / "ckpt"
    _run("first_half", str(ckpt), "")
    _run("resume", str(ckpt), str(tmp_path / "resumed.npy"))
    _run("straight", "", str(tmp_path / "straight.npy"))
    resumed, straight = np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "straight.npy")
    assert resumed.shape == straight.shape == (64, 6)
    assert np.array_equal(resumed, straight)          # bit for bit, not merely close


def test_roundtrip_preserves_types_dtypes_and_metadata(tmp_path: Path):
    state = {"rls": rls_init(5, 2, 0.3, jnp.float32), "gram": gram_init(5, 2), "buf": RandomBuffer(3, 5, "tanh"),
             "step": 7, "name": "x", "none": None, "items": [jnp.arange(3), (1.5, 2)]}
    save_state(tmp_path / "c", state, {"note": "hello"})
    back, meta = load_state(tmp_path / "c", like=state)
    assert meta == {"note": "hello"}
    assert type(back["rls"]).__name__ == "RLSState" and back["rls"].weight.dtype == jnp.float32
    assert back["buf"].activation == "tanh" and np.array_equal(back["buf"].weight, state["buf"].weight)
    assert back["step"] == 7 and back["none"] is None and back["items"][1] == (1.5, 2)
    with pytest.raises(FileExistsError):
        save_state(tmp_path / "c", state)
    save_state(tmp_path / "c", state, overwrite=True)


def test_mismatched_checkpoint_is_refused(tmp_path: Path):
    save_state(tmp_path / "c", rls_init(5, 2, 1.0))
    with pytest.raises(CheckpointError, match=r"expected shape \(6, 2\)"):
        load_state(tmp_path / "c", like=rls_init(6, 2, 1.0))
    with pytest.raises(CheckpointError, match="float32"):
        load_state(tmp_path / "c", like=rls_init(5, 2, 1.0, jnp.float32))
    with pytest.raises(CheckpointError, match="GramStats"):
        load_state(tmp_path / "c", like=gram_init(5, 2))


def test_truncated_or_corrupt_checkpoint_raises_clear_error(tmp_path: Path):
    save_state(tmp_path / "c", rls_init(40, 3, 1.0))
    data_files = [p for p in (tmp_path / "c").rglob("*") if p.is_file() and p.stat().st_size > 200
                  and "meta" not in p.parts]
    assert data_files
    for p in data_files:                                  # chop every array file in half
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "c")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_state(tmp_path / "missing")
