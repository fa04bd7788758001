"""Ridge over rows sharded across JAX processes: local Gram statistics, one ``psum``, the same W everywhere.

This is the absolute-aggregation law of AFL (Zhuang et al., 2024, "Analytic Federated Learning", the sum form
``W = (Σₖ XₖᵀXₖ + γI)⁻¹ Σₖ XₖᵀYₖ``, i.e. centralized ridge) run on ``jax.distributed`` instead of a federated
server: every process holds its own rows, accumulates ``(XₖᵀXₖ, XₖᵀYₖ, nₖ)`` with :func:`analytic.gram_update`,
the statistics are summed with ``jax.lax.psum`` under ``shard_map`` over a global mesh holding one device per
process, and every process solves the same ``(d, d)`` system with :func:`analytic.gram_solve`. Only Grams are
reduced, never weights (docs/methods.md §1), so the result equals single-process ridge on all rows for any split.

The code is backend-neutral: on CPU the cross-process collectives go through gloo (selected in
:func:`initialize`); on multi-host GPU/TPU the same mesh and ``psum`` use NCCL/ICI.

Command line (one process per shard; :func:`launch` spawns N local ones on 127.0.0.1)::

    python -m federated.multiprocess --process-id 0 --num-processes 2 --coordinator 127.0.0.1:12345 --out run/
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from analytic import GramStats, data_mesh, expand_classes, gram_init, gram_solve, gram_update, sharded_gram_update
from analytic.validation import check_features, check_gamma, check_labels

PROCESS_AXIS = "process"


def initialize(coordinator: str, num_processes: int, process_id: int, *, cpu_collectives: str = "gloo",
               timeout_seconds: int = 120) -> None:
    """Join the ``jax.distributed`` job; call before any other JAX computation in the process.

    ``coordinator`` is ``host:port`` of process 0. ``cpu_collectives`` selects the CPU cross-process
    collective library (gloo by default; ignored by GPU/TPU backends, which bring their own).
    """
    if not isinstance(process_id, int) or not isinstance(num_processes, int):
        raise TypeError(f"process_id and num_processes must be int, got {process_id!r}, {num_processes!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"need 0 <= process_id < num_processes, got process_id={process_id}, "
                         f"num_processes={num_processes}")
    if ":" not in coordinator:
        raise ValueError(f"coordinator must be 'host:port', got {coordinator!r}")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_seconds)


def process_mesh() -> Mesh:
    """A 1-D mesh over the first local device of every process (axis :data:`PROCESS_AXIS`)."""
    devices = [jax.local_devices(process_index=p)[0] for p in range(jax.process_count())]
    return Mesh(np.array(devices), (PROCESS_AXIS,))


def allreduce_stats(stats: GramStats) -> GramStats:
    """Sum every process's :class:`analytic.GramStats` with one ``psum``; every process gets the total.

    All processes must call this collectively. The class width is first agreed on (the widest wins, narrower
    statistics are zero-padded with :func:`analytic.expand_classes`, which is exact: an unseen class has a zero
    ``XᵀY`` column). A feature width or dtype that differs between processes raises the same ``ValueError`` on
    every process, before the reduction, instead of hanging in it.
    """
    if not isinstance(stats, GramStats):
        raise TypeError(f"stats must be analytic.GramStats, got {type(stats).__name__}")
    dim, classes = int(stats.xtx.shape[0]), int(stats.xty.shape[1])
    meta = np.array([dim, classes, np.dtype(stats.xtx.dtype).num], dtype=np.int64)
    # A small allgather of the shapes first: mismatched shapes inside psum would fail or hang differently on
    # each process; checked here, every process raises the same error.
    every = np.asarray(multihost_utils.process_allgather(meta)).reshape(-1, 3)
    if np.any(every[:, 0] != dim) or np.any(every[:, 2] != meta[2]):
        raise ValueError(f"allreduce_stats: processes disagree on the feature width or dtype; per process "
                         f"(dim, dtype number) = {every[:, [0, 2]].tolist()}")
    stats = expand_classes(stats, int(every[:, 1].max()))

    mesh = process_mesh()
    local_device = mesh.devices[jax.process_index()]
    sharding = NamedSharding(mesh, P(PROCESS_AXIS))

    def stacked(leaf: jax.Array) -> jax.Array:
        local = jax.device_put(jnp.asarray(leaf)[None], local_device)
        return jax.make_array_from_single_device_arrays((mesh.size, *local.shape[1:]), sharding, [local])

    total = _psum_over_processes(mesh)(jax.tree.map(stacked, stats))
    # out_specs=P() makes the sum replicated; the process's own copy is its addressable shard.
    return jax.tree.map(lambda a: a.addressable_data(0), total)


def _psum_over_processes(mesh: Mesh):
    def body(stacked: GramStats) -> GramStats:
        return jax.tree.map(lambda a: jax.lax.psum(a[0], PROCESS_AXIS), stacked)

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(PROCESS_AXIS), out_specs=P()))


def local_stats(x: Any, y: Any, *, classes: int | None = None, batch_size: int = 8192,
                dtype: Any = None) -> GramStats:
    """This process's ``(XₖᵀXₖ, XₖᵀYₖ, nₖ)``, accumulated with the core in row blocks of ``batch_size``.

    ``x: (n, d)`` features, ``y: (n,)`` integer labels or ``(n, c)`` targets; ``n`` may be 0 (a process with no
    rows contributes zero statistics). With several local devices (a GPU host) each block is split over them
    with :func:`analytic.sharded_gram_update`. Validated before any compute.
    """
    x = check_features(x, name="x", allow_empty=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if np.shape(y)[:1] != x.shape[:1]:
        raise ValueError(f"x and y disagree on the row count: x {x.shape}, y {np.shape(y)}")
    if np.ndim(y) == 1 and x.shape[0]:
        y = check_labels(y, name="y", classes=classes, n=x.shape[0])
    width = int(classes) if classes is not None else 0
    stats = gram_init(x.shape[1], width, dtype=dtype if dtype is not None else x.dtype)
    devices = jax.local_devices()
    mesh = data_mesh(devices) if len(devices) > 1 else None
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        stats = gram_update(stats, xb, yb) if mesh is None else sharded_gram_update(stats, xb, yb, mesh)
    return stats


def distributed_ridge(x: Any, y: Any, gamma: float, *, classes: int | None = None, batch_size: int = 8192,
                      dtype: Any = None) -> tuple[jax.Array, GramStats]:
    """``W (d, c) = (XᵀX + γI)⁻¹XᵀY`` over the rows of all processes; returns ``(W, total statistics)``.

    Collective: every process calls it with its own rows. Equals ridge on the concatenation of all shards.
    """
    gamma = check_gamma(gamma)
    total = allreduce_stats(local_stats(x, y, classes=classes, batch_size=batch_size, dtype=dtype))
    return gram_solve(total, gamma), total


# ----------------------------------------------------------------------------------------------- command line


_BLOCK = 4096  # synthetic rows are drawn in fixed blocks so any shard can be generated on its own


def load_shard(name: str, rows: int, dim: int, classes: int, seed: int, num_processes: int = 1,
               process_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Process ``process_id``'s contiguous shard of a dataset that is the same whatever the process count.

    ``digits``: scikit-learn's bundled 8×8 digits (1797 × 64, 10 classes; no download). ``synthetic``: ``rows``
    Gaussian rows with labels from a random linear teacher, generated block by block (``seed``, block index), so a
    process materializes only its own rows.
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        part = shard_rows(data.data.shape[0], num_processes, process_id)
        return data.data[part] / 16.0, data.target[part].astype(np.int64)
    if name != "synthetic":
        raise ValueError(f"unknown dataset {name!r}; choose 'digits' or 'synthetic'")
    teacher = np.random.default_rng([seed, 0]).standard_normal((dim, classes))
    part = shard_rows(rows, num_processes, process_id)
    blocks = []
    for b in range(part.start // _BLOCK, -(-part.stop // _BLOCK)):
        lo, hi = b * _BLOCK, min((b + 1) * _BLOCK, rows)
        x = np.random.default_rng([seed, 1, b]).standard_normal((hi - lo, dim))
        blocks.append(x[max(part.start - lo, 0):part.stop - lo])
    x = np.concatenate(blocks) if blocks else np.zeros((0, dim))
    return x, np.argmax(x @ teacher, axis=1).astype(np.int64)


def shard_rows(rows: int, num_processes: int, process_id: int) -> slice:
    """Contiguous, near-equal shard ``process_id`` of ``rows`` rows."""
    bounds = np.linspace(0, rows, num_processes + 1).round().astype(int)
    return slice(int(bounds[process_id]), int(bounds[process_id + 1]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m federated.multiprocess", description=__doc__.split("\n")[0])
    p.add_argument("--process-id", type=int, required=True)
    p.add_argument("--num-processes", type=int, required=True)
    p.add_argument("--coordinator", required=True, help="host:port of process 0")
    p.add_argument("--data", default="digits", choices=["digits", "synthetic"])
    p.add_argument("--rows", type=int, default=20000, help="synthetic: total rows over all processes")
    p.add_argument("--dim", type=int, default=64, help="synthetic: feature width")
    p.add_argument("--classes", type=int, default=10, help="synthetic: number of classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=0, help="also time accumulate+psum this many times (best)")
    p.add_argument("--out", type=Path, default=None, help="folder for weights_<id>.npy and summary_<id>.json")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    initialize(args.coordinator, args.num_processes, args.process_id)
    x_local, y_local = load_shard(args.data, args.rows, args.dim, args.classes, args.seed, args.num_processes,
                                  args.process_id)
    x_local = x_local.astype(args.dtype)
    classes = 10 if args.data == "digits" else args.classes
    weight, total = distributed_ridge(x_local, y_local, args.gamma, classes=classes, batch_size=args.batch_size)
    weight = np.asarray(weight)
    summary: dict[str, Any] = {"process_id": args.process_id, "num_processes": jax.process_count(),
                               "local_rows": int(x_local.shape[0]), "total_rows": int(total.count),
                               "devices": [str(d) for d in jax.devices()]}
    if args.repeats:
        summary.update(_time_phases(x_local, y_local, classes, args.batch_size, args.repeats))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        np.save(args.out / f"weights_{args.process_id}.npy", weight)
        (args.out / f"summary_{args.process_id}.json").write_text(json.dumps(summary, indent=2) + "\n")
    jax.distributed.shutdown()
    return summary


def _time_phases(x: np.ndarray, y: np.ndarray, classes: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of the local accumulation and of the cross-process reduction, all processes
    starting each repeat together (a barrier), so the slowest process sets the collective's time."""
    best = {"accumulate_seconds": float("inf"), "allreduce_seconds": float("inf")}
    for _ in range(repeats):
        multihost_utils.sync_global_devices("accumulate")
        t0 = time.perf_counter()
        stats = jax.block_until_ready(local_stats(x, y, classes=classes, batch_size=batch_size))
        t1 = time.perf_counter()
        jax.block_until_ready(allreduce_stats(stats))
        t2 = time.perf_counter()
        best["accumulate_seconds"] = min(best["accumulate_seconds"], t1 - t0)
        best["allreduce_seconds"] = min(best["allreduce_seconds"], t2 - t1)
    return best


# --------------------------------------------------------------------------------------------------- launcher


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def launch(num_processes: int, args: Sequence[str] = (), *, timeout: float = 300.0,
           env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess]:
    """Run ``python -m federated.multiprocess`` as ``num_processes`` local processes on 127.0.0.1 and wait.

    ``args`` are passed to every process after ``--process-id/--num-processes/--coordinator``. Raises
    ``RuntimeError`` with the failing process's stderr if any process exits non-zero or the run times out
    (then every process is killed).
    """
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
    coordinator = f"127.0.0.1:{free_port()}"
    child_env = {**os.environ, **(env or {})}
    # The children import this package by module name; make the tree it lives in importable for them.
    root = str(Path(__file__).resolve().parent.parent)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, child_env.get("PYTHONPATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "federated.multiprocess", "--process-id", str(i),
             "--num-processes", str(num_processes), "--coordinator", coordinator, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
        for i in range(num_processes)
    ]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"multi-process run did not finish within {timeout} s") from exc
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for i, res in enumerate(results):
        if res.returncode != 0:
            raise RuntimeError(f"process {i} of {num_processes} exited with {res.returncode}:\n{res.stderr[-4000:]}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
