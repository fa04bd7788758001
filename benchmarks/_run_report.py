"""CSV logs, the mean ± std summary over seeds and the accuracy-vs-phase plot of ``python -m benchmarks run``.

Floats are written with ``repr`` (the shortest string that reads back to the same double), so a CSV read back
holds exactly the numbers that were computed and two runs can be compared byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_csv", "read_csv", "atomic_write", "summarize_results", "write_summary", "plot_summary",
           "METRICS", "MEMORY_NOTE", "TIMING_COLUMNS"]

#: Per-run metrics averaged over seeds (percent, except the wall/fit seconds and megabytes).
METRICS = ("A_avg", "A_last", "forgetting", "A_auc", "fit_s", "wall_s", "max_rss_mb", "state_mb")
#: Columns that measure the machine rather than the learner: they differ between an interrupted-and-resumed and an
#: uninterrupted run; every other column is identical.
TIMING_COLUMNS = ("fit_s", "wall_s", "elapsed_s", "max_rss_mb")
MEMORY_NOTE = ("max_rss_mb: resource.getrusage(RUSAGE_SELF).ru_maxrss in MB, the process's peak resident set size "
               "when the run (or phase) ended -- a process-wide high-water mark that also counts whatever the "
               "process held before (data, earlier runs, compiled programs); state_mb: bytes of the arrays the "
               "learner keeps between calls (continual.runner.state_bytes)")


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, list | tuple | np.ndarray):
        return " ".join(str(int(v)) for v in value)
    return "" if value is None else str(value)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so a reader (or a restart after Ctrl-C)
    sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Rows as CSV with a header; floats by ``repr``, int lists space-separated, ``None`` empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write(path, buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV written by :func:`write_csv`, as strings."""
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def summarize_results(results: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (learner, gamma), from the rows of the per-run ``result.csv``.

    The deviation is NumPy's default population form (``np.std``, ``ddof = 0``); ``nan`` metrics (e.g.
    forgetting of a one-phase run) stay ``nan``. Per-phase accuracies ``acc_<k>`` are summarized the same way.
    """
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in results:
        groups.setdefault((row["learner"], row["gamma"]), []).append(row)
    out = []
    for (learner, gamma), rows in groups.items():
        phases = sorted(int(k[4:]) for k in rows[0] if k.startswith("acc_"))
        entry: dict[str, Any] = {"learner": learner, "class": rows[0]["class"], "gamma": gamma,
                                 "seeds": " ".join(r["seed"] for r in rows), "n_seeds": len(rows)}
        for key in (*METRICS, *(f"acc_{k}" for k in phases)):
            values = np.array([_float(r[key]) for r in rows])
            entry[f"{key}_mean"] = float(np.mean(values))
            entry[f"{key}_std"] = float(np.std(values))
        out.append(entry)
    return out


def write_summary(root: Path, summary: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[Path, Path]:
    """``summary.csv`` (one row per learner and gamma) and ``summary.json`` (the same rows plus ``meta``)."""
    columns = list(summary[0]) if summary else ["learner", "gamma"]
    for row in summary[1:]:
        columns += [c for c in row if c not in columns]
    write_csv(root / "summary.csv", summary, columns)
    payload = {**meta, "std": "numpy.std over seeds, ddof=0", "memory": MEMORY_NOTE, "rows": summary}
    atomic_write(root / "summary.json", json.dumps(payload, indent=2, default=str) + "\n")
    return root / "summary.csv", root / "summary.json"


def plot_summary(root: Path, summary: list[dict[str, Any]], title: str) -> Path:
    """``accuracy.png``: accuracy on seen classes after each phase, mean line and ± std band per learner and
    gamma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for row in summary:
        phases = sorted(int(k[4:-5]) for k in row if k.startswith("acc_") and k.endswith("_mean"))
        mean = np.array([row[f"acc_{k}_mean"] for k in phases])
        std = np.array([row[f"acc_{k}_std"] for k in phases])
        label = row["learner"] + ("" if row["gamma"] == "" else f" γ={row['gamma']}")
        line, = ax.plot(phases, mean, marker="o", ms=3, lw=1.2, label=f"{label} (n={row['n_seeds']})")
        ax.fill_between(phases, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("phase")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = root / "accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
