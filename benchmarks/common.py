"""Shared helpers for benchmark scripts: result records, side-by-side timing and the machine's matmul peak."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"

_PACKAGES = (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers", "flwr", "scikit-learn",
)


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with the options every benchmark shares (``--quick``, ``--out``)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for CI and a first look")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON and PNG results")
    return p


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        # Result files are left out: a benchmark that writes after each section would otherwise call its own
        # later writes "dirty".
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
             ":(top,exclude)benchmarks/results"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpus": os.cpu_count()}
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:  # noqa: BLE001 - the record is best-effort, a broken backend must not lose results
        pass
    return info


def write_results(name: str, figures: dict[str, Any], out: Path = RESULTS_DIR) -> Path:
    """Write ``<out>/<name>.json`` with the command, git revision, versions, machine and ``figures``."""
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        # The command as typed: through the dispatcher argv[0] is benchmarks/__main__.py and argv[1] the name.
        "command": ("python -m benchmarks " + " ".join(sys.argv[1:])) if sys.argv[0].endswith("__main__.py")
        else " ".join(sys.argv),
        "git_revision": git_revision(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "machine": machine(),
        "figures": figures,
    }
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def max_rel_diff(a: Any, b: Any) -> float:
    """``max |a − b| / max |b|``: the relative gap of ``a`` from the reference ``b``, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def best_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` runs (seconds); ``fn`` must block until done."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> dict[str, float]:
    """Measured GEMM rate (FLOP/s) of NumPy/OpenBLAS and of XLA for an ``n×n @ n×n`` product."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    flops = 2.0 * n**3
    t_np = best_time(lambda: a @ b, repeats)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    mm = jax.jit(jnp.matmul)
    t_jax = best_time(lambda: mm(ja, jb).block_until_ready(), repeats)
    return {"numpy_flops": flops / t_np, "xla_flops": flops / t_jax, "n": n, "dtype": dtype}


def save_figure(fig: Any, name: str, out: Path = RESULTS_DIR) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None, floatfmt: str = "{:.4g}") -> str:
    """Print (and return) a plain-text table of ``rows``."""
    if not rows:
        return ""
    columns = columns or list(rows[0])
    cells = [[floatfmt.format(r.get(c)) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text
