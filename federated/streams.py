"""Client task streams for federated continual learning (the protocol of AFCL, Tang et al., 2025, "AFCL: Analytic
Federated Continual Learning for Spatio-Temporal Invariance of Non-IID Data", arXiv 2505.12245, §3 problem setup).

Class-incremental: the classes, taken in ``class_order`` (default ascending), are cut into ``tasks`` near-equal
contiguous groups; ``task_order`` (a permutation of ``range(tasks)``) then reorders the groups. Within task ``t``
the rows of that task's classes are split over the clients by one of :mod:`federated.partition`'s schemes (IID,
Dirichlet(α), shards), with its own fixed seed ``seed + t`` -- the *spatial* heterogeneity; the class order across
tasks is the *temporal* one. The result is ``streams[t][k]``: the sorted (global) row indices client ``k`` holds in
task ``t``; a client may hold no rows in a task (an empty array), and every row of a task's classes is held by
exactly one client in that task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from analytic.validation import check_labels
from continual._wrapper import positive_int
from federated import partition

__all__ = ["ClientStreams", "task_classes", "client_streams", "seen_rows", "task_rows", "SCHEMES"]

#: Partition schemes a task's rows may be split by.
SCHEMES = ("iid", "dirichlet", "shards")


class ClientStreams(NamedTuple):
    """``streams[t][k]``: client ``k``'s rows in task ``t`` (sorted ``int64`` indices into the labelled set);
    ``classes[t]``: the class ids task ``t`` introduces (sorted)."""

    streams: list[list[np.ndarray]]
    classes: list[np.ndarray]

    @property
    def tasks(self) -> int:
        return len(self.streams)

    @property
    def clients(self) -> int:
        return len(self.streams[0]) if self.streams else 0

    def seen_classes(self, task: int) -> np.ndarray:
        """Class ids introduced by tasks ``0..task``."""
        return np.sort(np.concatenate(self.classes[: task + 1]))


def _permutation(order: Any, values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(order)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D sequence of integers, got {arr.dtype} with shape {arr.shape}")
    if arr.size != values.size or not np.array_equal(np.sort(arr), np.sort(values)):
        raise ValueError(f"{name} must be a permutation of {values.tolist() if values.size <= 20 else values.size}"
                         f", got {arr.tolist() if arr.size <= 20 else f'{arr.size} entries'}")
    return arr.astype(np.int64)


def task_classes(labels: Any, tasks: int, class_order: Sequence[int] | None = None,
                 task_order: Sequence[int] | None = None) -> list[np.ndarray]:
    """The class ids of each task: ``class_order`` (default: the present classes ascending) cut into ``tasks``
    near-equal contiguous groups (sizes differ by at most one), reordered by ``task_order``."""
    y = check_labels(labels, name="labels")
    tasks = positive_int(tasks, "tasks")
    present = np.unique(y)
    order = present if class_order is None else _permutation(class_order, present, "class_order")
    if tasks > order.size:
        raise ValueError(f"tasks={tasks} exceeds the {order.size} classes present in labels")
    groups = np.array_split(order, tasks)
    if task_order is not None:
        perm = _permutation(task_order, np.arange(tasks), "task_order")
        groups = [groups[i] for i in perm]
    return [np.sort(g) for g in groups]


def _split(scheme: str, labels: np.ndarray, clients: int, alpha: float, shards_per_client: int,
           seed: int) -> list[np.ndarray]:
    if scheme == "iid":
        return partition.iid(labels, clients, seed=seed)
    if scheme == "dirichlet":
        return partition.dirichlet(labels, clients, alpha, seed=seed)
    return partition.shards(labels, clients, shards_per_client, seed=seed)


def client_streams(
    labels: Any, tasks: int, clients: int, scheme: str = "iid", *, alpha: float = 1.0, shards_per_client: int = 2,
    class_order: Sequence[int] | None = None, task_order: Sequence[int] | None = None, seed: int = 0,
) -> ClientStreams:
    """Class-incremental task streams over ``clients`` clients (module docstring).

    ``scheme`` is one of :data:`SCHEMES`; ``alpha`` (Dirichlet concentration, finite > 0) and ``shards_per_client``
    apply to their schemes. Task ``t`` is partitioned with seed ``seed + t`` so a stream is reproducible and the
    tasks' splits are independent draws. All arguments are checked before any partition is drawn.
    """
    y = check_labels(labels, name="labels")
    tasks = positive_int(tasks, "tasks")
    clients = positive_int(clients, "clients")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "dirichlet":
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
            raise TypeError(f"alpha must be a real number > 0, got {type(alpha).__name__} {alpha!r}")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be finite and > 0, got {alpha!r}")
    if scheme == "shards":
        shards_per_client = positive_int(shards_per_client, "shards_per_client")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    groups = task_classes(y, tasks, class_order, task_order)
    rows = [np.flatnonzero(np.isin(y, g)) for g in groups]
    if scheme == "shards":
        # Checked for every task up front: a failure in task 3 must not come after tasks 0-2 were drawn.
        short = [t for t, r in enumerate(rows) if r.size < clients * shards_per_client]
        if short:
            raise ValueError(f"shards: task {short[0]} has {rows[short[0]].size} rows, fewer than the "
                             f"{clients * shards_per_client} shards of {clients} clients x {shards_per_client}")
    streams = []
    for t, r in enumerate(rows):
        parts = _split(scheme, y[r], clients, float(alpha), shards_per_client, int(seed) + t)
        # Partitions index the task's own rows; map them back to the labelled set's row numbers.
        streams.append([r[np.asarray(p, np.int64)] for p in parts])
    return ClientStreams(streams, groups)


def task_rows(streams: ClientStreams, task: int) -> np.ndarray:
    """All rows of task ``task`` (every client's), sorted."""
    parts = streams.streams[task]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def seen_rows(streams: ClientStreams, task: int) -> np.ndarray:
    """All rows of tasks ``0..task`` pooled, sorted: the data joint (centralized) learning would have seen."""
    return np.sort(np.concatenate([task_rows(streams, t) for t in range(task + 1)]))
