"""Client partitions of a labelled data set, with PFLlib semantics (Zhang et al., PFLlib, ``utils/dataset_utils``).

Each function takes the integer labels ``(n,)`` of the pooled training set and returns one index array per client
(``list[np.ndarray]``, sorted, disjoint, covering every row exactly once):

- :func:`iid`: a random permutation cut into ``clients`` near-equal parts;
- :func:`dirichlet`: for every class, proportions ``p ~ Dir(α·1_K)`` split that class's rows over the clients;
  clients already holding ``≥ n/K`` rows get no more (PFLlib's balancing rule, from Li et al., NIID-Bench); the
  whole draw is repeated until every client holds ``≥ min_size`` rows;
- :func:`shards`: rows sorted by label, cut into ``clients·shards_per_client`` equal shards, shards dealt at random
  (McMahan et al., 2017, the "pathological non-IID" split).

:func:`class_histogram` tabulates rows per (client, class); :func:`plot_histogram` draws it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analytic.validation import check_labels

__all__ = ["iid", "dirichlet", "shards", "class_histogram", "plot_histogram"]


def _check_clients(clients: Any, n: int) -> int:
    if isinstance(clients, bool) or not isinstance(clients, (int, np.integer)) or clients < 1:
        raise ValueError(f"clients must be a positive integer, got {clients!r}")
    return int(clients)


def iid(labels: Any, clients: int, seed: int = 0) -> list[np.ndarray]:
    """Uniformly random, near-equal split of the rows (sizes differ by at most one)."""
    y = check_labels(labels, name="labels")
    clients = _check_clients(clients, y.size)
    perm = np.random.default_rng(seed).permutation(y.size)
    return [np.sort(part) for part in np.array_split(perm, clients)]


def dirichlet(
    labels: Any, clients: int, alpha: float, min_size: int = 0, seed: int = 0, max_tries: int = 1000
) -> list[np.ndarray]:
    """Label-skewed split: class ``k``'s rows go to the clients in proportions ``p_k ~ Dir(α)`` (PFLlib ``dir``).

    Smaller ``alpha`` = more skew (α = 0.01: most clients see one or two classes). The whole draw is repeated until
    every client holds at least ``min_size`` rows; ``ValueError`` after ``max_tries`` draws (with many clients
    and small α, ``min_size`` must be small -- PFLlib would loop forever instead).
    """
    y = check_labels(labels, name="labels")
    clients = _check_clients(clients, y.size)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be finite and > 0, got {alpha!r}")
    if min_size < 0 or min_size * clients > y.size:
        raise ValueError(f"min_size={min_size} is impossible for {y.size} rows over {clients} clients")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    cap = y.size / clients
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        sizes = np.zeros(clients, dtype=np.int64)
        for k in classes:
            rows = np.flatnonzero(y == k)
            rng.shuffle(rows)
            p = rng.dirichlet(np.full(clients, alpha))
            # PFLlib's balancing rule: a client already at the mean size takes no more rows.
            p = p * (sizes < cap)
            total = p.sum()
            p = p / total if total > 0 else np.full(clients, 1.0 / clients)
            cuts = (np.cumsum(p) * rows.size).astype(np.int64)[:-1]
            for c, chunk in enumerate(np.split(rows, cuts)):
                if chunk.size:
                    parts[c].append(chunk)
                    sizes[c] += chunk.size
        if sizes.min() >= min_size:
            return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    raise ValueError(
        f"dirichlet: no draw in {max_tries} tries gave every one of {clients} clients >= {min_size} rows "
        f"(alpha={alpha}); lower min_size or raise alpha"
    )


def shards(labels: Any, clients: int, shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Pathological split: sort by label, cut into ``clients·shards_per_client`` shards, deal them at random."""
    y = check_labels(labels, name="labels")
    clients = _check_clients(clients, y.size)
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client!r}")
    total = clients * shards_per_client
    if total > y.size:
        raise ValueError(f"{total} shards ({clients} clients x {shards_per_client}) exceed the {y.size} rows")
    rng = np.random.default_rng(seed)
    # A stable sort keeps the within-class order random (after a shuffle) yet reproducible for the seed.
    order = rng.permutation(y.size)
    order = order[np.argsort(y[order], kind="stable")]
    pieces = np.array_split(order, total)
    deal = rng.permutation(total).reshape(clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in hand])) for hand in deal]


def class_histogram(labels: Any, parts: list[np.ndarray], classes: int | None = None) -> np.ndarray:
    """Rows per (client, class): an integer table ``(clients, classes)``."""
    y = check_labels(labels, name="labels", classes=classes)
    width = int(y.max()) + 1 if classes is None else int(classes)
    table = np.zeros((len(parts), width), dtype=np.int64)
    for c, idx in enumerate(parts):
        table[c] = np.bincount(y[np.asarray(idx, dtype=np.int64)], minlength=width)
    return table


def plot_histogram(table: np.ndarray, ax: Any = None, title: str | None = None, max_clients: int = 100) -> Any:
    """Stacked bars of rows per class for each client (the first ``max_clients``); returns the matplotlib axes."""
    import matplotlib.pyplot as plt

    table = np.asarray(table)[:max_clients]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.12 * table.shape[0] + 2), 3))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(table.shape[1], 2)))
    bottom = np.zeros(table.shape[0])
    for k in range(table.shape[1]):
        ax.bar(np.arange(table.shape[0]), table[:, k], bottom=bottom, color=colours[k], width=0.9, label=str(k))
        bottom += table[:, k]
    ax.set_xlabel("client")
    ax.set_ylabel("rows")
    if title:
        ax.set_title(title)
    if table.shape[1] <= 20:
        ax.legend(title="class", fontsize=6, ncol=2, loc="upper right")
    return ax
