"""Continual-learning scenarios: seeded splits of a labelled set into phases of *index arrays*.

Every scenario returns a list of :class:`Phase` records whose ``indices`` index into the caller's arrays
(``x[phase.indices]``); no data is copied. The same ``(labels, arguments, seed)`` always gives the same phases.

- :func:`class_incremental` — the ACIL / DS-AL protocol (Zhuang et al., NeurIPS 2022, Sec. 4.1; AAAI 2024):
  a base phase holding ``base_classes`` classes, then ``phases`` phases that split the remaining classes evenly.
  The class order is a seeded permutation, so which classes form the base phase depends on ``seed``.
- :func:`si_blurry` — the Si-Blurry stream of MVP (Moon et al., ICCV 2023) used by GACL (Zhuang et al.,
  NeurIPS 2024, Sec. 5.1): a ``disjoint_ratio`` share of the classes are *disjoint* (each appears in exactly one
  task, cut into tasks at random points, so task sizes vary); the other classes are *blurry* (each has a home
  task, split evenly), and a ``blurry_ratio`` share of the blurry classes' samples leaks into other tasks, so those
  classes reappear later (or earlier) in the stream.
- :func:`online` — cuts a scenario (or a plain label array) into mini-batches of ``batch_size`` indices, in stream
  order, for one-pass online learning (F-OAL uses batches of 10).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Phase", "Batch", "class_incremental", "si_blurry", "online"]


class Phase(NamedTuple):
    """One phase (task) of a scenario.

    indices: (n_phase,) int64 positions into the labelled set, in the order they are to be learned.
    new_classes: classes whose first sample in the stream falls in this phase, in class order.
    seen_classes: every class present in this phase or an earlier one (sorted); the evaluation set of the
      class-incremental protocol after this phase.
    """

    indices: np.ndarray
    new_classes: np.ndarray
    seen_classes: np.ndarray


class Batch(NamedTuple):
    """One online mini-batch: ``indices`` (b,) into the labelled set, and the ``phase`` it belongs to."""

    indices: np.ndarray
    phase: int


def _check_label_array(labels: object, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of class ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
            raise TypeError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name} must be non-negative class ids, got min {arr.min()}")
    return arr.astype(np.int64, copy=False)


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_ratio(value: object, name: str) -> float:
    ratio = float(value)  # type: ignore[arg-type]
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return ratio


def _phases_from_groups(labels: np.ndarray, groups: Sequence[np.ndarray], class_order: np.ndarray) -> list[Phase]:
    """Turn per-phase index groups into :class:`Phase` records (new classes listed in ``class_order``)."""
    rank = np.empty(class_order.max() + 1, dtype=np.int64)
    rank[class_order] = np.arange(class_order.size)
    seen: set[int] = set()
    phases = []
    for idx in groups:
        present = np.unique(labels[idx])
        new = np.array(sorted(set(present.tolist()) - seen, key=lambda c: rank[c]), dtype=np.int64)
        seen |= set(present.tolist())
        phases.append(Phase(np.asarray(idx, dtype=np.int64), new, np.array(sorted(seen), dtype=np.int64)))
    return phases


def class_incremental(labels: object, base_classes: int, phases: int, seed: int = 0) -> list[Phase]:
    """Split ``labels`` into a base phase and ``phases`` incremental phases of disjoint classes.

    The classes present in ``labels`` are permuted with ``seed``; the first ``base_classes`` of that order form
    phase 0 and the rest are divided into ``phases`` nearly equal groups (``np.array_split``), so the result has
    ``phases + 1`` entries (``base_classes = 0`` drops the base phase: ``phases`` entries). Samples inside a phase
    are shuffled with the same seed. Every index of ``labels`` appears in exactly one phase.
    """
    labels = _check_label_array(labels)
    phases = _check_positive_int(phases, "phases")
    classes = np.unique(labels)
    if isinstance(base_classes, bool) or not isinstance(base_classes, (int, np.integer)) or base_classes < 0:
        raise ValueError(f"base_classes must be a non-negative integer, got {base_classes!r}")
    if base_classes + phases > classes.size:
        raise ValueError(
            f"base_classes + phases = {base_classes + phases} exceeds the {classes.size} classes present in labels"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    class_groups = ([order[:base_classes]] if base_classes else []) + np.array_split(order[base_classes:], phases)
    groups = [rng.permutation(np.flatnonzero(np.isin(labels, group))) for group in class_groups]
    return _phases_from_groups(labels, groups, order)


def si_blurry(
    labels: object,
    tasks: int = 5,
    disjoint_ratio: float = 0.5,
    blurry_ratio: float = 0.1,
    seed: int = 0,
    stochastic: bool = True,
) -> list[Phase]:
    """The Si-Blurry stream (MVP, Moon et al. ICCV 2023; the GACL setting: 5 tasks, 50% disjoint, 10% blurry).

    1. Classes are permuted with ``seed``; the first ``round(disjoint_ratio * C)`` are *disjoint* classes, the
       rest *blurry* classes.
    2. Disjoint classes are cut into ``tasks`` consecutive groups at sorted random cut points
       (``stochastic=True``, so tasks hold different numbers of classes -- at least one each when there are
       as many disjoint classes as tasks) or evenly
       (``stochastic=False``). All samples of a disjoint class go to its task.
    3. Blurry classes are dealt evenly to home tasks. ``floor(blurry_ratio * N_blurry)`` of the blurry classes'
       samples (``N_blurry`` of them in total), drawn at random, leak: each is moved to a uniformly drawn task
       other than its home task. The rest stay home.
    4. Each task's samples are shuffled.

    Returns ``tasks`` phases covering every index exactly once. ``Phase.new_classes`` lists the classes first
    met in that task; a blurry class can appear in several tasks.
    """
    labels = _check_label_array(labels)
    tasks = _check_positive_int(tasks, "tasks")
    disjoint_ratio = _check_ratio(disjoint_ratio, "disjoint_ratio")
    blurry_ratio = _check_ratio(blurry_ratio, "blurry_ratio")
    classes = np.unique(labels)
    if classes.size < tasks:
        raise ValueError(f"tasks = {tasks} exceeds the {classes.size} classes present in labels")
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    n_disjoint = round(disjoint_ratio * classes.size)
    disjoint, blurry = order[:n_disjoint], order[n_disjoint:]
    if stochastic and n_disjoint >= tasks:
        # Distinct interior cut points: task sizes vary but every task keeps at least one disjoint class.
        cuts = np.sort(rng.choice(np.arange(1, n_disjoint), size=tasks - 1, replace=False))
        disjoint_groups = np.split(disjoint, cuts)
    elif stochastic:
        disjoint_groups = np.split(disjoint, np.sort(rng.integers(0, n_disjoint + 1, size=tasks - 1)))
    else:
        disjoint_groups = np.array_split(disjoint, tasks)
    home = np.full(classes.max() + 1, -1, dtype=np.int64)
    for task, group in enumerate(disjoint_groups):
        home[group] = task
    for task, group in enumerate(np.array_split(blurry, tasks)):
        home[group] = task
    assignment = home[labels]
    blurry_idx = np.flatnonzero(np.isin(labels, blurry))
    n_leak = int(np.floor(blurry_ratio * blurry_idx.size)) if tasks > 1 else 0
    leaked = rng.choice(blurry_idx, size=n_leak, replace=False)
    # Draw among the other tasks: an offset in 1..tasks-1 from home never lands back home.
    if n_leak:
        assignment[leaked] = (assignment[leaked] + rng.integers(1, tasks, size=n_leak)) % tasks
    groups = [rng.permutation(np.flatnonzero(assignment == task)) for task in range(tasks)]
    return _phases_from_groups(labels, groups, order)


def online(
    stream: Sequence[Phase] | object, batch_size: int = 10, seed: int | None = None, drop_last: bool = False
) -> list[Batch]:
    """Cut a stream into mini-batches of ``batch_size`` indices for one-pass online learning (F-OAL: 10).

    ``stream`` is a scenario (a sequence of :class:`Phase`) — batches then never straddle two phases and keep the
    phase's order — or a 1-D label array, which is one phase in order (or shuffled with ``seed`` if given).
    The last batch of a phase is shorter unless ``drop_last``.
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    if isinstance(stream, (list, tuple)) and stream and all(isinstance(p, Phase) for p in stream):
        orders = [p.indices for p in stream]
    else:
        labels = _check_label_array(stream, "stream")
        idx = np.arange(labels.size, dtype=np.int64)
        orders = [np.random.default_rng(seed).permutation(idx) if seed is not None else idx]
    batches = []
    for phase, idx in enumerate(orders):
        stop = idx.size - idx.size % batch_size if drop_last else idx.size
        batches += [Batch(idx[i:i + batch_size], phase) for i in range(0, stop, batch_size)]
    return batches
