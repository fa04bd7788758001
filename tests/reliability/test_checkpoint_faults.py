"""Checkpoints under attack and under faults.

Two different defences are tested here, and they protect against different things:

- the type registry stops code execution. A crafted checkpoint whose author also recomputed the metadata digest (an
  attacker can rewrite both files) must still be refused: loading only constructs types registered with
  ``register_checkpoint_type`` and only imports modules from the library's own fixed table, never a name read from
  the file. The marker file each crafted payload would create must never appear.
- the metadata digest (and the per-leaf checksums) stop silent damage: a flipped byte, a truncated or deleted file
  anywhere in the checkpoint tree either raises ``CheckpointError`` or -- if it hit a byte that is never read --
  loads a state bit-identical to the original; never another exception, never a different state.

Crash safety: ``kill -9`` at random moments of overwriting saves (real processes), plus an in-process crash
injected at every rename/fsync/delete of a save, must leave the path loadable and equal to the old or the new state.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import analytic.checkpoint as ckpt
from analytic import AnalyticLinear, CheckpointError, RandomBuffer, gram_init, load_state, rls_init, save_state
from analytic.checkpoint import (
    atomic_savez,
    atomic_write_text,
    metadata_digest,
    register_checkpoint_type,
    registered_checkpoint_types,
)

REPO = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------------------------
def _state() -> dict[str, Any]:
    """A state touching every node kind: NamedTuple, pytree class (with static data), dict, list, tuple, scalars."""
    rng = np.random.default_rng(0)
    rls = rls_init(16, 3, 0.5)._replace(weight=jnp.asarray(rng.standard_normal((16, 3))))
    return {"rls": rls, "gram": gram_init(4, 2), "buf": RandomBuffer(5, 16, "tanh", seed=1), "step": 7,
            "name": "x", "none": None, "items": [jnp.arange(3, dtype=jnp.int32), (1.5, True)]}


def _assert_identical(a: Any, b: Any) -> None:
    """Same tree (types, static data), same leaves bit for bit, same dtypes."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if hasattr(x, "dtype"):
            assert np.asarray(x).dtype == np.asarray(y).dtype
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert type(x) is type(y) and x == y


def _rewrite_meta(path: Path, edit: Any, recompute_digest: bool = True) -> None:
    """Apply ``edit(meta) -> meta`` to the stored metadata; like an attacker, also recompute the digest."""
    meta_file, digest_file = path / "meta" / "metadata", path / "digest" / "metadata"
    meta = edit(json.loads(meta_file.read_text()))
    meta_file.write_text(json.dumps(meta))
    if recompute_digest:
        digest_file.write_text(json.dumps({"sha256": metadata_digest(meta)}))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name and p.name.startswith(path.name))


# -- registry: no code execution -----------------------------------------------------------------------------------
class Unregistered(NamedTuple):
    a: Any


@register_checkpoint_type(name="tests.reliability:Point")
class Point(NamedTuple):
    x: Any
    label: str


def test_registry_lists_the_library_state_types():
    names = registered_checkpoint_types()
    for key in ("analytic.gram:GramStats", "analytic.rls:RLSState", "analytic.buffers:RandomBuffer",
                "analytic.buffers:GaussianKernelBuffer", "continual.acil:ACILState", "continual.dsal:DSALState",
                "continual.dsal:StreamActivations", "continual.gacl:GACLState", "continual.air:AIRState",
                "continual.foal:FOALState", "continual.baselines:SLDAState", "federated.deepafl:DeepAFLModel",
                "federated.afl:AFLServerState"):
        assert key in names


def test_unregistered_namedtuple_cannot_be_saved_or_loaded(tmp_path: Path):
    with pytest.raises(TypeError, match="not a registered checkpoint type"):
        save_state(tmp_path / "u", Unregistered(jnp.ones(2)))
    # Written as a registered type, then renamed in the metadata (digest recomputed): still refused on load.
    save_state(tmp_path / "c", Point(jnp.ones(2), "p"))
    name = f"{Unregistered.__module__}:{Unregistered.__qualname__}"

    def rename(meta: dict) -> dict:
        meta["tree"]["type"] = name
        meta["tree"]["fields"] = {"a": meta["tree"]["fields"]["x"]}
        return meta

    _rewrite_meta(tmp_path / "c", rename)
    with pytest.raises(CheckpointError, match="not a registered checkpoint type"):
        load_state(tmp_path / "c")


def test_registered_types_round_trip(tmp_path: Path):
    state = {"p": Point(jnp.arange(4.0), "pt"), **_state()}
    save_state(tmp_path / "c", state, {"note": [1, 2]})
    back, meta = load_state(tmp_path / "c", like=state)
    assert meta == {"note": [1, 2]} and type(back["p"]) is Point and back["p"].label == "pt"
    _assert_identical(back, state)


def test_registry_refuses_to_rebind_a_name():
    with pytest.raises(ValueError, match="already registered"):
        register_checkpoint_type(Unregistered, name="tests.reliability:Point")
    with pytest.raises(TypeError):
        register_checkpoint_type(dict)


def _payloads(marker: Path) -> list[dict[str, Any]]:
    """Structure nodes that, under the old ``_import_type``, would have created ``marker``."""
    shell = f"touch {marker}"
    scalar = {"kind": "scalar", "value": shell}
    return [
        {"kind": "namedtuple", "type": "os:system", "fields": {"command": scalar}},
        {"kind": "namedtuple", "type": "posix:system", "fields": {"command": scalar}},
        {"kind": "namedtuple", "type": "builtins:eval", "fields": {"source": {
            "kind": "scalar", "value": f"open({str(marker)!r}, 'w').close()"}}},
        {"kind": "pytree", "type": "subprocess:Popen", "aux": ["touch", str(marker)],
         "children": {"kind": "tuple", "items": []}},
        # Inside the library's own packages, attributes that lead to os: the old top-level-package check passed.
        {"kind": "namedtuple", "type": "analytic.checkpoint:os.system", "fields": {"command": scalar}},
        {"kind": "namedtuple", "type": "continual.data.loaders:pickle.os.system", "fields": {"command": scalar}},
        {"kind": "pytree", "type": "analytic.checkpoint:shutil", "aux": None,
         "children": {"kind": "tuple", "items": []}},
        # A registered key with extra fields that a permissive constructor might pass on.
        {"kind": "namedtuple", "type": "analytic.rls:RLSState", "fields": {"command": scalar}},
    ]


def test_crafted_checkpoints_with_recomputed_digest_cannot_run_code(tmp_path: Path):
    marker = tmp_path / "pwned"
    for i, payload in enumerate(_payloads(marker)):
        path = tmp_path / f"c{i}"
        save_state(path, {"w": jnp.ones(2)})

        def inject(meta: dict, payload: dict = payload) -> dict:
            meta["tree"]["items"]["evil"] = payload
            return meta

        _rewrite_meta(path, inject)
        with pytest.raises(CheckpointError, match=r"not a registered|fields|keys"):
            load_state(path)
        assert not marker.exists(), payload
        # Without recomputing the digest the damage is caught even earlier.
        save_state(path, {"w": jnp.ones(2)}, overwrite=True)
        _rewrite_meta(path, inject, recompute_digest=False)
        with pytest.raises(CheckpointError, match="digest"):
            load_state(path)
        assert not marker.exists()


def test_loading_never_imports_a_module_named_by_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_ckpt_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass T(tuple):\n    "
                                                   "_fields = ('a',)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    save_state(tmp_path / "c", Point(jnp.ones(2), "p"))
    _rewrite_meta(tmp_path / "c", lambda m: {**m, "tree": {**m["tree"], "type": "evil_ckpt_module:T"}})
    with pytest.raises(CheckpointError, match="not a registered checkpoint type"):
        load_state(tmp_path / "c")
    assert not marker.exists() and "evil_ckpt_module" not in sys.modules


# -- digest and schema: damage is always CheckpointError -----------------------------------------------------------
def test_flipped_gamma_in_metadata_is_detected(tmp_path: Path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    AnalyticLinear(0.5).fit(x, y).save(tmp_path / "est")
    meta_file = tmp_path / "est" / "meta" / "metadata"
    text = meta_file.read_text()
    assert text.count('"gamma": 0.5') == 1
    meta_file.write_text(text.replace('"gamma": 0.5', '"gamma": 0.7'))
    with pytest.raises(CheckpointError, match="digest mismatch"):
        AnalyticLinear.load(tmp_path / "est")


_SCHEMA_DAMAGE = {
    "missing tree": lambda m: {k: v for k, v in m.items() if k != "tree"},
    "missing user": lambda m: {k: v for k, v in m.items() if k != "user"},
    "extra top-level key": lambda m: {**m, "extra": 1},
    "user not an object": lambda m: {**m, "user": [1]},
    "format as string": lambda m: {**m, "format": "2"},
    "old format": lambda m: {**m, "format": 1},
    "foreign library": lambda m: {**m, "library": "other"},
    "metadata not an object": lambda m: [m],
    "tree not an object": lambda m: {**m, "tree": "dict"},
    "kind unknown": lambda m: {**m, "tree": {**m["tree"], "kind": "lambda"}},
    "kind as int": lambda m: {**m, "tree": {**m["tree"], "kind": 3}},
    "items as list": lambda m: {**m, "tree": {**m["tree"], "items": [1]}},
    "node missing items": lambda m: {**m, "tree": {"kind": "dict"}},
}


def _leaf_edit(field: str, value: Any) -> Any:
    def edit(m: dict) -> dict:
        m["tree"]["items"]["w"][field] = value
        return m
    return edit


_SCHEMA_DAMAGE.update({
    "index as string": _leaf_edit("index", "0"),
    "index negative": _leaf_edit("index", -1),
    "index out of range": _leaf_edit("index", 5),
    "index bool": _leaf_edit("index", False),
    "shape negative": _leaf_edit("shape", [-2]),
    "shape wrong": _leaf_edit("shape", [3]),
    "shape as int": _leaf_edit("shape", 2),
    "dtype object": _leaf_edit("dtype", "object"),
    "dtype other": _leaf_edit("dtype", "float32"),
    "dtype as list": _leaf_edit("dtype", ["float64"]),
    "sha wrong": _leaf_edit("sha256", "0" * 64),
    "sha as int": _leaf_edit("sha256", 5),
    "leaf extra key": _leaf_edit("extra", 1),
    "scalar as object": lambda m: {**m, "tree": {**m["tree"], "items": {**m["tree"]["items"], "s": {
        "kind": "scalar", "value": {"a": 1}}}}},
    "namedtuple fields as list": lambda m: {**m, "tree": {**m["tree"], "items": {**m["tree"]["items"], "s": {
        "kind": "namedtuple", "type": "analytic.rls:RLSState", "fields": []}}}},
    "namedtuple missing field": lambda m: {**m, "tree": {**m["tree"], "items": {**m["tree"]["items"], "s": {
        "kind": "namedtuple", "type": "analytic.rls:RLSState", "fields": {"weight": {"kind": "none"}}}}}},
    "pytree bad aux": lambda m: {**m, "tree": {**m["tree"], "items": {**m["tree"]["items"], "s": {
        "kind": "pytree", "type": "analytic.buffers:RandomBuffer", "aux": {"x": 1},
        "children": {"kind": "tuple", "items": [{"kind": "none"}]}}}}},
})


@pytest.mark.parametrize("damage", sorted(_SCHEMA_DAMAGE))
def test_malformed_metadata_raises_checkpoint_error(tmp_path: Path, damage: str):
    save_state(tmp_path / "c", {"w": jnp.arange(2.0)})
    _rewrite_meta(tmp_path / "c", _SCHEMA_DAMAGE[damage])
    with pytest.raises(CheckpointError) as info:
        load_state(tmp_path / "c")
    assert str(tmp_path / "c") in str(info.value) or "state" in str(info.value)


def test_digest_damage_and_missing_items(tmp_path: Path):
    path = tmp_path / "c"
    save_state(path, {"w": jnp.arange(2.0)})
    (path / "digest" / "metadata").write_text('{"sha256": 5}')
    with pytest.raises(CheckpointError, match="digest"):
        load_state(path)
    for item in ("digest", "meta", "arrays"):
        save_state(path, {"w": jnp.arange(2.0)}, overwrite=True)
        import shutil
        shutil.rmtree(path / item)
        with pytest.raises(CheckpointError, match=item):
            load_state(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_state(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_state(tmp_path / "file")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's loop teardown on errors
def test_byte_flips_and_truncation_anywhere_in_the_tree(tmp_path: Path):
    """Every file of a checkpoint: first/last byte and 6 seeded random bytes flipped, truncated to 0, half and
    len-1, and deleted. Each damaged load is CheckpointError or a bit-identical state."""
    state, user = _state(), {"gamma": 0.5, "tag": "t"}
    path = tmp_path / "c"
    save_state(path, state, user)
    rng = random.Random(1234)
    outcomes = {"CheckpointError": 0, "identical": 0}
    files = _files(path)
    assert len(files) >= 10
    for f in files:
        original = f.read_bytes()
        n = len(original)
        flips = sorted({0, n - 1, *(rng.randrange(n) for _ in range(6))}) if n else []
        damages = [("flip", i) for i in flips] + [("truncate", k) for k in sorted({0, n // 2, max(n - 1, 0)})]
        damages.append(("delete", 0))
        for how, where in damages:
            if how == "flip":
                data = bytearray(original)
                data[where] ^= rng.randrange(1, 256)
                f.write_bytes(bytes(data))
            elif how == "truncate":
                f.write_bytes(original[:where])
            else:
                f.unlink()
            try:
                back, meta = load_state(path)
            except CheckpointError:
                outcomes["CheckpointError"] += 1
            else:
                _assert_identical(back, state)
                assert meta == user, (f, how, where)
                outcomes["identical"] += 1
            f.write_bytes(original)
    total = sum(outcomes.values())
    print(f"\nbyte-flip/truncate/delete trials on {len(files)} files: {total} -> {outcomes}")
    assert total >= 10 * len(files) and outcomes["CheckpointError"] > 0
    _assert_identical(load_state(path)[0], state)  # the restored original still loads


# -- crash safety ---------------------------------------------------------------------------------------------------
class _Crash(BaseException):
    """Stands for the process dying at this instant (a BaseException, so nothing catches it as an error)."""


@pytest.mark.parametrize("op", ["rename", "fsync", "rmtree"])
def test_crash_at_every_filesystem_step_of_an_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str):
    old_state, new_state = {"w": jnp.arange(4.0)}, {"w": jnp.arange(4.0) + 1.0}
    path = tmp_path / "c"
    real = {"rename": os.rename, "fsync": ckpt._fsync, "rmtree": ckpt.shutil.rmtree}[op]
    k, crashed_between_renames = 0, 0
    while True:
        save_state(path, old_state, overwrite=True)
        calls = [0]

        def crashing(*args: Any, at: int = k, calls: list[int] = calls, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == at + 1:
                raise _Crash
            return real(*args, **kwargs)

        target = {"rename": (ckpt.os, "rename"), "fsync": (ckpt, "_fsync"), "rmtree": (ckpt.shutil, "rmtree")}[op]
        monkeypatch.setattr(*target, crashing)
        try:
            save_state(path, new_state, overwrite=True)
            finished = True
        except _Crash:
            finished = False
        monkeypatch.undo()
        crashed_between_renames += not path.exists()
        back, _ = load_state(path)
        assert path.is_dir()
        w = np.asarray(back["w"])
        assert np.array_equal(w, old_state["w"]) or np.array_equal(w, new_state["w"])
        if finished:
            assert np.array_equal(w, new_state["w"])
            break
        k += 1
    save_state(path, old_state, overwrite=True)
    assert _siblings(path) == []  # a later successful save removes every leftover
    print(f"\ncrash injected at each of {k} {op} calls of an overwrite; {crashed_between_renames} left the path "
          "missing (recovered)")
    assert k >= 1
    if op == "rename":
        assert crashed_between_renames >= 1  # the window between the two renames was exercised and recovered


def test_reader_recovering_inside_the_rename_window_does_not_break_the_save(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "c"
    save_state(path, {"w": jnp.zeros(2)})
    real, seen = os.rename, []

    def rename_with_reader(src: Any, dst: Any) -> None:
        if Path(dst) == path and Path(src).name.startswith("c.tmp-") and not seen:
            seen.append(None)  # the reader's own recovery rename comes through here too: only one reader
            seen[0] = load_state(path)[0]  # a concurrent reader: path is missing, it recovers the new copy
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename_with_reader)
    save_state(path, {"w": jnp.ones(2)}, overwrite=True)
    monkeypatch.undo()
    assert len(seen) == 1 and np.array_equal(np.asarray(seen[0]["w"]), np.ones(2))
    assert np.array_equal(np.asarray(load_state(path)[0]["w"]), np.ones(2)) and _siblings(path) == []


def test_recovery_prefers_the_complete_new_copy(tmp_path: Path):
    path = tmp_path / "c"
    save_state(path, {"w": jnp.zeros(2)})
    save_state(tmp_path / "staged", {"w": jnp.ones(2)})
    token = "0" * 32
    os.rename(path, path.with_name(f"c.old-{token}"))
    os.rename(tmp_path / "staged", path.with_name(f"c.tmp-{token}"))
    back, _ = load_state(path)
    assert np.array_equal(np.asarray(back["w"]), np.ones(2)) and path.is_dir()
    # A damaged new copy falls back to the old one.
    os.rename(path, path.with_name(f"c.tmp-{token}"))
    (path.with_name(f"c.tmp-{token}") / "digest" / "metadata").write_text("{}")
    back, _ = load_state(path)
    assert np.array_equal(np.asarray(back["w"]), np.zeros(2))
    # A crashed first save (only a .tmp-, no .old-) is not a checkpoint.
    save_state(tmp_path / ("d.tmp-" + "1" * 32), {"w": jnp.ones(2)})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_state(tmp_path / "d")
    # Cleanup after a successful save removes exactly the save's own temporaries, never look-alike user folders.
    (tmp_path / "d.tmp-mine").mkdir()
    save_state(tmp_path / "d", {"w": jnp.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("d")) == ["d", "d.tmp-mine"]


_KILL_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from analytic import RandomBuffer, rls_init, save_state
    path = Path(sys.argv[1])
    def state(seed):
        rng = np.random.default_rng(seed)
        rls = rls_init(48, 5, 0.5)._replace(weight=rng.standard_normal((48, 5)))
        return {"rls": rls, "buf": RandomBuffer(8, 48, "relu", seed=seed), "step": seed}
    a, b = state(1), state(2)
    save_state(path.parent / "warm", a)  # first-call costs before the parent starts its clock
    print("ready", flush=True)
    sys.stdin.readline()  # idle (no CPU) until the parent says go, so waiting children do not slow the others
    while True:
        save_state(path, b, {"seed": 2}, overwrite=True)
        save_state(path, a, {"seed": 1}, overwrite=True)
""")


def _kill_state(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rls = rls_init(48, 5, 0.5)._replace(weight=jnp.asarray(rng.standard_normal((48, 5))))
    return {"rls": rls, "buf": RandomBuffer(8, 48, "relu", seed=seed), "step": seed}


@pytest.mark.slow  # 70-90 s on a busy 2-core machine, mostly the 32 children's imports
def test_kill_9_during_overwriting_saves_leaves_old_or_new(tmp_path: Path):
    """Real processes, SIGKILL after a random delay while they overwrite the checkpoint in a loop.

    Children are started ahead (they import the library while an earlier trial runs) and wait for "go"; each is
    killed 0..3 save durations after it starts saving, so kills land at random points of its first saves.
    """
    trials, ahead = 32, 3
    states = {1: _kill_state(1), 2: _kill_state(2)}
    start = time.monotonic()
    save_state(tmp_path / "timing", states[1])
    t0 = time.monotonic()
    for _ in range(3):
        save_state(tmp_path / "timing", states[2], overwrite=True)
    save_seconds = (time.monotonic() - t0) / 3
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    rng = random.Random(7)
    stats = {"mid_save": 0, "path_missing": 0, "old": 0, "new": 0}

    def launch(t: int) -> tuple[subprocess.Popen, Path]:
        path = tmp_path / f"t{t}" / "ckpt"
        save_state(path, states[1], {"seed": 1})
        proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        return proc, path

    pending = [launch(t) for t in range(min(ahead, trials))]
    for t in range(trials):
        proc, path = pending.pop(0)
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()[-3000:]
        if t + ahead < trials:
            pending.append(launch(t + ahead))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(rng.uniform(0.0, 3 * save_seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
        stats["mid_save"] += bool(_siblings(path)) or not path.exists()
        stats["path_missing"] += not path.exists()
        back, meta = load_state(path)
        seed = meta["seed"]
        assert seed in (1, 2)
        _assert_identical(back, states[seed])
        stats["old" if seed == 1 else "new"] += 1
        save_state(path, states[1], {"seed": 1}, overwrite=True)
        assert _siblings(path) == []  # the next successful save removed what the killed one left
    print(f"\nkill -9 trials: {trials} (save ~{1000 * save_seconds:.0f} ms, total {time.monotonic() - start:.1f} s): "
          f"{stats}")
    assert stats["mid_save"] >= trials // 4  # most kills must land inside a save, or the test proves little


# -- every saver goes through the safe path -------------------------------------------------------------------------
def _digits(n: int = 60, d: int = 8, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, c, n)
    return rng.standard_normal((n, d)) + y[:, None], y


def test_analytic_linear_load_validates_stored_settings(tmp_path: Path):
    x, y = _digits()
    est = AnalyticLinear(0.5, buffer=RandomBuffer(8, 16, seed=0), solver="rls").fit(x, y)
    est.save(tmp_path / "e")
    est.save(tmp_path / "e", overwrite=True)
    assert _siblings(tmp_path / "e") == [] and (tmp_path / "e" / "digest").is_dir()
    for key, value, match in [("gamma", -1.0, "gamma"), ("gamma", "big", "gamma"), ("solver", "gram", "solver"),
                              ("classes", 1, "classes"), ("classes", "3", "classes")]:
        save = tmp_path / f"e_{key}_{value}"
        est.save(save)

        def edit(m: dict, key: str = key, value: Any = value) -> dict:
            m["user"][key] = value
            return m

        _rewrite_meta(save, edit)
        with pytest.raises(CheckpointError, match=match):
            AnalyticLinear.load(save)
    back = AnalyticLinear.load(tmp_path / "e")
    assert np.array_equal(back.predict(x), est.predict(x))


def test_learner_load_validates_params_against_state(tmp_path: Path):
    from continual import ACIL

    x, y = _digits()
    learner = ACIL(0.5, buffer_size=32, seed=0).partial_fit(x, y, classes=3)
    learner.save(tmp_path / "l")
    learner.save(tmp_path / "l", overwrite=True)
    assert _siblings(tmp_path / "l") == []
    for i, (edit, match) in enumerate([
            (lambda m: {**m, "user": {**m["user"], "params": {**m["user"]["params"], "buffer_size": 64}}}, "shape"),
            (lambda m: {**m, "user": {**m["user"], "params": {**m["user"]["params"], "gamma": "x"}}}, "arguments"),
            (lambda m: {**m, "user": {**m["user"], "params": {**m["user"]["params"], "bogus": 1}}}, "arguments"),
            (lambda m: {**m, "user": {**m["user"], "params": []}}, "metadata keys"),
            (lambda m: {**m, "user": {**m["user"], "n_classes_declared": "3"}}, "n_classes_declared"),
            (lambda m: {**m, "user": {**m["user"], "n_classes_declared": 2}}, "n_classes_declared")]):
        path = tmp_path / f"l{i}"
        learner.save(path)
        _rewrite_meta(path, edit)
        with pytest.raises(CheckpointError, match=match):
            ACIL.load(path)
    back = ACIL.load(tmp_path / "l")
    np.testing.assert_array_equal(np.asarray(back.decision_function(x)), np.asarray(learner.decision_function(x)))


def test_federated_states_round_trip(tmp_path: Path):
    """DeepAFL's trained model and the AFL server state are registered types: they save and load exactly."""
    from federated.afl import server_init
    from federated.deepafl import DeepAFL

    x, y = _digits()
    state = {"model": DeepAFL(phi_dim=32, block_dim=16, layers=2).fit(x, y).model_, "server": server_init(8, 3)}
    save_state(tmp_path / "f", state)
    back, _ = load_state(tmp_path / "f", like=state)
    _assert_identical(back, state)


def test_adapter_checkpoints_are_verified(tmp_path: Path):
    pytest.importorskip("flax")
    from peft_probe.lora import LoraConfig, inject_lora, load_adapters, save_adapters
    from tests.peft_probe.lora_fixtures import tiny_model

    model = tiny_model()
    inject_lora(model, LoraConfig(r=2, alpha=4, target_modules=("v_proj",)), 0)
    save_adapters(model, tmp_path / "a", {"steps": 1})
    save_adapters(model, tmp_path / "a", {"steps": 2}, overwrite=True)
    assert _siblings(tmp_path / "a") == []
    other = tiny_model()
    inject_lora(other, LoraConfig(r=2, alpha=4, target_modules=("v_proj",)), 5)
    assert load_adapters(other, tmp_path / "a") == {"steps": 2}
    meta_file = tmp_path / "a" / "meta" / "metadata"
    meta_file.write_text(meta_file.read_text().replace('"steps": 2', '"steps": 3'))
    with pytest.raises(CheckpointError, match="digest"):
        load_adapters(other, tmp_path / "a")


@pytest.mark.parametrize("kwargs", [
    {"r": 0}, {"r": -2}, {"r": 2.0}, {"r": "8"}, {"r": True}, {"alpha": "16"}, {"alpha": None}, {"alpha": True},
    {"alpha": float("nan")}, {"dropout": "0.1"}, {"dropout": None}, {"dropout": 1.0}, {"target_modules": 5},
    {"target_modules": None}, {"target_modules": []}, {"target_modules": [1]}, {"target_modules": b"q_proj"},
    {"target_modules": "("}, {"layers_to_transform": True}, {"layers_to_transform": 1.0},
    {"layers_to_transform": [-1]}, {"layers_to_transform": "1"}, {"init": 3},
])
def test_lora_config_bad_input_names_the_argument(kwargs: dict[str, Any]):
    pytest.importorskip("flax")
    from peft_probe.lora import LoraConfig

    with pytest.raises((ValueError, TypeError), match=next(iter(kwargs))):
        LoraConfig(**kwargs)


def test_flower_result_files_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("flwr")
    from federated.flower import server_app

    assert server_app.atomic_savez is atomic_savez and server_app.atomic_write_text is atomic_write_text
    out = tmp_path / "result.npz"
    atomic_savez(out, {"weight": np.arange(6.0).reshape(2, 3)})
    atomic_write_text(tmp_path / "result.json", '{"ok": 1}\n')
    with np.load(out, allow_pickle=False) as f:
        assert np.array_equal(f["weight"], np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match="allow_pickle"):
        atomic_savez(out, {"o": np.array([{}], dtype=object)})

    def failing_replace(*_: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(tmp_path / "result.json", '{"ok": 2}\n')
    monkeypatch.undo()
    assert (tmp_path / "result.json").read_text() == '{"ok": 1}\n'  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "result.npz"]  # no temp file left


# -- CIFAR-100 batches: restricted unpickler -----------------------------------------------------------------------
class _Evil:
    def __init__(self, func: Any, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.func, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "nested"])
def test_cifar_batch_referencing_code_is_refused_without_side_effect(tmp_path: Path, how: str):
    import builtins

    from continual.data.loaders import load_cifar100

    marker = tmp_path / "pwned"
    evil = (_Evil(os.system, f"touch {marker}") if how != "builtins.eval"
            else _Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()"))
    data = np.zeros((2, 3072), np.uint8)
    batch = ({b"data": data, b"fine_labels": [0, 1], b"x": [evil]} if how == "nested" else evil)
    for name in ("train", "test"):
        (tmp_path / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar100(tmp_path)
    assert not marker.exists()
