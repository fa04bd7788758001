"""Sharded Gram accumulation over ``jax.distributed`` processes: time vs process count at a fixed total row count.

``python -m benchmarks multiprocess [--quick]`` (writes ``multiprocess[_quick].json/png``) launches 1, 2 and 4
local processes (gloo CPU collectives on 127.0.0.1) with :func:`federated.multiprocess.launch`; each holds
``rows / P`` rows and times, best of ``repeats`` with a barrier before each, (a) its local ``XᵀX, XᵀY``
accumulation (:func:`analytic.gram_update`) and (b) the cross-process ``psum`` of the statistics. The slowest
process sets each phase's time. Ratios are to P = 1 in the same run.

What this measures on a 2-core machine: XLA already runs one process's GEMM on both cores, so P processes share
the same two cores -- the accumulation speed-up is bounded by ~1 and shows the *overhead* of splitting the work
(extra processes, thread oversubscription), while the psum time is the real cost of the gloo reduction of a
``(d, d)`` matrix over localhost TCP. On P hosts with their own cores the accumulation would shrink by ~P and the
psum would grow with ``d²`` and the network, not with the rows.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.common import parser, print_table, save_figure, write_results
from federated.multiprocess import launch

NAME = "multiprocess"


def _run(processes: int, rows: int, dim: int, classes: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        launch(processes, ["--data", "synthetic", "--rows", str(rows), "--dim", str(dim), "--classes", str(classes),
                           "--dtype", "float32", "--repeats", str(repeats), "--out", tmp], timeout=1800,
               env={"JAX_PLATFORMS": "cpu"})
        summaries = [json.loads((Path(tmp) / f"summary_{i}.json").read_text()) for i in range(processes)]
    accumulate = max(s["accumulate_seconds"] for s in summaries)
    allreduce = max(s["allreduce_seconds"] for s in summaries)
    return {"processes": processes, "rows_per_process": rows // processes, "accumulate_s": accumulate,
            "allreduce_s": allreduce, "total_s": accumulate + allreduce,
            "accumulate_gflops": 2.0 * rows * dim * (dim + classes) / accumulate / 1e9}


def main(argv: list[str]) -> dict:
    p = parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    rows = args.rows or (40_000 if args.quick else 400_000)
    dim = args.dim or (128 if args.quick else 512)
    repeats = args.repeats or (3 if args.quick else 5)
    classes = 10

    load_before = os.getloadavg()
    table = [_run(n, rows, dim, classes, repeats) for n in tqdm(args.processes, desc="process counts")]
    base = next((r for r in table if r["processes"] == 1), table[0])
    for r in table:
        r["speedup_vs_1"] = base["total_s"] / r["total_s"]
        r["allreduce_share"] = r["allreduce_s"] / r["total_s"]
    print_table(table, ["processes", "rows_per_process", "accumulate_s", "allreduce_s", "total_s", "speedup_vs_1",
                        "allreduce_share", "accumulate_gflops"])
    figures = {"rows": rows, "dim": dim, "classes": classes, "dtype": "float32", "repeats": repeats,
               "collectives": "gloo (CPU, 127.0.0.1)", "table": table,
               "load_average_before_after": [load_before[0], os.getloadavg()[0]],
               "note": "2-core machine shared with other jobs: P processes split the same two cores, so "
                       "speedup_vs_1 measures the cost of process-level sharding (ideal ~1), not multi-host scaling"}
    name = NAME + ("_quick" if args.quick else "")
    _plot(table, args.out, name)
    write_results(name, figures, args.out)
    return figures


def _plot(table: list[dict[str, Any]], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    procs = [str(r["processes"]) for r in table]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    acc = [r["accumulate_s"] for r in table]
    red = [r["allreduce_s"] for r in table]
    ax.bar(procs, acc, label="local XᵀX, XᵀY accumulation")
    ax.bar(procs, red, bottom=acc, label="psum across processes (gloo)")
    ax.set_xlabel("processes (fixed total rows)")
    ax.set_ylabel("seconds (slowest process, best of repeats)")
    ax.set_title("Sharded Gram statistics over jax.distributed")
    ax.legend(fontsize=8)
    save_figure(fig, name, out)
    plt.close(fig)
