"""What a Flower run of AFL/DeepAFL/AFCL is configured with, and the data each side loads.

The run configuration is Flower's (``[tool.flwr.app.config]`` of ``federated/flower/app/pyproject.toml``,
overridable with ``flwr run --run-config``); :data:`DEFAULTS` lists every key. The server forwards the keys a
client needs (:data:`CLIENT_KEYS`) inside each message, so a client never depends on how the run was started.

Data: scikit-learn's bundled ``digits`` (1797 × 64, 10 classes, no download) or a seeded ``synthetic`` set, split
once into train/test with a fixed seed. Client ``partition-id`` of ``num-partitions`` (Flower node config; set
automatically by the simulation engine) holds its part of the training rows under
:func:`federated.partition.dirichlet` (or ``iid``/``shards``); the server holds the test rows for evaluation.
AFCL streams tasks: the classes are cut into ``tasks`` groups (in ``task-order``) and each task's rows are
partitioned over the clients anew (:func:`federated.streams.client_streams`, seed ``partition-seed + t``;
``min-size`` does not apply), so client ``k``'s task-``t`` rows are the same on every host and in-process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from federated import partition

DEFAULTS: dict[str, Any] = {
    "method": "afl",  # "afl" (one round, waves for late clients), "deepafl" (2T+1 rounds), "afcl" (a wave per task)
    "dataset": "digits",  # "digits", "synthetic" or "features" (the .npz file named by features-file)
    "features-file": "",  # features only: x_train, y_train, x_test, y_test (continual.data.save_feature_file)
    "rows": 3000, "dim": 32, "classes": 10,  # synthetic only
    "data-seed": 0, "test-fraction": 0.2,
    "partitioner": "dirichlet", "alpha": 0.5, "min-size": 5, "partition-seed": 0,
    "num-partitions": 3,  # clients the server expects (must match the nodes' num-partitions)
    "min-clients": 3,  # nodes to wait for before the first round
    "connect-timeout": 120.0, "round-timeout": 120.0,
    "client-dtype": "float32",  # statistics dtype on the clients (= transport dtype); float64 enables x64
    # AFL
    "gamma": 1.0, "remove-regularization": True, "global-gamma": 1.0,
    "waves": 1,  # AFL rounds; a later wave asks only nodes that have not contributed yet (late or failed)
    "join-timeout": 0.0,  # before a later wave, wait this long for num-partitions nodes to be connected
    # DeepAFL (docs/methods.md §3; the authors use 1024/1024/20/1/0.05/gelu)
    "phi-dim": 128, "block-dim": 128, "layers": 2, "lam": 1.0, "deepafl-gamma": 0.05,
    "activation": "gelu", "input-activation": "tanh", "seed": 0,
    # AFCL: class-incremental tasks, one wave per task; task-order: comma-separated permutation of 0..tasks-1
    "tasks": 5, "task-order": "",
    # Fault injection for drills and tests: "<partition>:<raise|silent>[@<round>]", comma-separated.
    "faults": "",
    "output-dir": "",  # if set, the server writes result.json and result.npz there
}

METHODS = ("afl", "deepafl", "afcl")

CLIENT_KEYS = ("dataset", "features-file", "rows", "dim", "classes", "data-seed", "test-fraction", "partitioner",
               "alpha", "min-size", "partition-seed", "num-partitions", "client-dtype", "gamma", "faults",
               "round-timeout", "tasks", "task-order")


def resolve_config(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``DEFAULTS`` updated with the run config and ``overrides``; unknown keys and wrong types raise ValueError."""
    config = dict(DEFAULTS)
    for source in (run_config, overrides or {}):
        for key, value in source.items():
            if key not in DEFAULTS:
                raise ValueError(f"unknown run-config key {key!r}; known keys: {sorted(DEFAULTS)}")
            want = type(DEFAULTS[key])
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ValueError(f"run-config {key!r} must be {want.__name__}, got {value!r}")
            config[key] = value
    if config["method"] not in METHODS:
        raise ValueError(f"run-config 'method' must be one of {METHODS}, got {config['method']!r}")
    if config["client-dtype"] not in ("float32", "float64"):
        raise ValueError(f"run-config 'client-dtype' must be 'float32' or 'float64', got {config['client-dtype']!r}")
    for key in ("num-partitions", "min-clients", "waves", "tasks"):
        if config[key] < 1:
            raise ValueError(f"run-config {key!r} must be >= 1, got {config[key]!r}")
    parse_faults(config["faults"])
    parse_task_order(config["task-order"], config["tasks"])
    return config


def parse_task_order(spec: str, tasks: int) -> list[int] | None:
    """``"2,0,1"`` -> ``[2, 0, 1]`` (a permutation of ``0..tasks-1``); ``""`` -> ``None`` (tasks in class order)."""
    if not spec.strip():
        return None
    try:
        order = [int(item) for item in spec.split(",")]
    except ValueError:
        raise ValueError(f"run-config 'task-order' {spec!r} is not comma-separated integers") from None
    if sorted(order) != list(range(tasks)):
        raise ValueError(f"run-config 'task-order' {spec!r} is not a permutation of 0..{tasks - 1} (tasks={tasks})")
    return order


def parse_faults(spec: str) -> dict[int, tuple[str, int]]:
    """``"1:raise,2:silent@3"`` -> ``{1: ("raise", 1), 2: ("silent", 3)}`` (partition -> (fault, round))."""
    faults: dict[int, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            pid, rest = item.split(":")
            kind, _, rnd = rest.partition("@")
            faults[int(pid)] = (kind, int(rnd or 1))
        except ValueError:
            raise ValueError(f"faults entry {item!r} is not '<partition>:<raise|silent>[@<round>]'") from None
        if kind not in ("raise", "silent"):
            raise ValueError(f"faults entry {item!r}: the fault must be 'raise' or 'silent'")
    return faults


class Split(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int


def load_split(config: Mapping[str, Any]) -> Split:
    """The whole train/test split of the configured dataset (deterministic in ``data-seed``).

    ``features`` keeps the file's own train/test split (``test-fraction`` and ``data-seed`` do not apply): a
    feature file made once from real data (e.g. ``continual.data.features.fashion_mnist_features``) is what every
    client and the server then read.
    """
    name, seed = config["dataset"], int(config["data-seed"])
    if name == "features":
        from continual.data import load_feature_file

        if not config["features-file"]:
            raise ValueError("run-config dataset='features' needs 'features-file' (an .npz feature file)")
        data = load_feature_file(config["features-file"])
        return Split(data.x_train, data.y_train, data.x_test, data.y_test, data.classes)
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        x, y, classes = data.data / 16.0, data.target.astype(np.int64), 10
    elif name == "synthetic":
        rng = np.random.default_rng(seed)
        classes = int(config["classes"])
        x = rng.standard_normal((int(config["rows"]), int(config["dim"])))
        y = np.argmax(x @ rng.standard_normal((x.shape[1], classes)), axis=1).astype(np.int64)
    else:
        raise ValueError(f"run-config 'dataset' must be 'digits', 'synthetic' or 'features', got {name!r}")
    order = np.random.default_rng(seed + 1).permutation(x.shape[0])
    n_test = int(round(float(config["test-fraction"]) * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train], x[test], y[test], classes)


def partition_indices(y_train: np.ndarray, config: Mapping[str, Any], num_partitions: int) -> list[np.ndarray]:
    """Row indices of every client's part of the training set (the same on every host)."""
    kind, seed = config["partitioner"], int(config["partition-seed"])
    if kind == "dirichlet":
        return partition.dirichlet(y_train, num_partitions, float(config["alpha"]), int(config["min-size"]), seed)
    if kind == "iid":
        return partition.iid(y_train, num_partitions, seed)
    if kind == "shards":
        return partition.shards(y_train, num_partitions, seed=seed)
    raise ValueError(f"run-config 'partitioner' must be 'dirichlet', 'iid' or 'shards', got {kind!r}")


def load_partition(
    config: Mapping[str, Any], partition_id: int, num_partitions: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Client ``partition_id``'s training rows ``(x (n_k, d), y (n_k,), classes)``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    split = load_split(config)
    rows = partition_indices(split.y_train, config, num_partitions)[partition_id]
    return split.x_train[rows], split.y_train[rows], split.classes


def task_streams(config: Mapping[str, Any], y_train: np.ndarray, num_partitions: int) -> Any:
    """AFCL's :class:`federated.streams.ClientStreams` of the training rows (the same on every host)."""
    from federated.streams import client_streams

    kind = config["partitioner"]
    if kind not in ("dirichlet", "iid", "shards"):
        raise ValueError(f"run-config 'partitioner' must be 'dirichlet', 'iid' or 'shards', got {kind!r}")
    return client_streams(y_train, int(config["tasks"]), num_partitions, kind, alpha=float(config["alpha"]),
                          task_order=parse_task_order(config["task-order"], int(config["tasks"])),
                          seed=int(config["partition-seed"]))


def load_task_partition(
    config: Mapping[str, Any], partition_id: int, num_partitions: int, task_index: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Client ``partition_id``'s training rows of AFCL task ``task_index`` ``(x, y, classes)`` (possibly empty)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    if not 0 <= task_index < int(config["tasks"]):
        raise ValueError(f"task {task_index} is outside 0..{int(config['tasks']) - 1}")
    split = load_split(config)
    rows = task_streams(config, split.y_train, num_partitions).streams[task_index][partition_id]
    return split.x_train[rows], split.y_train[rows], split.classes
