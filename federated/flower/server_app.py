"""Flower ``ServerApp`` for AFL (Zhuang et al., 2024), DeepAFL (Tang et al., 2026) and AFCL (Tang et al., 2025).

AFL: one round -- every node uploads ``(XₖᵀXₖ, XₖᵀYₖ, nₖ, γ)`` and the server applies the absolute aggregation law
in sum form with regularization removal (:mod:`federated.afl`). Because the law is a sum, a client that fails or
stays silent is simply left out of the sum, and one that answers in a later *wave* (``waves > 1``: later waves ask
only the nodes that have not contributed, including nodes that joined meanwhile) is merged exactly: the final
weight equals centralized ridge on the rows of every merged client.

DeepAFL: the 2T+1-round layer-wise protocol of :class:`federated.deepafl.DeepAFLServer`; a node that fails or
misses a round is dropped for the rest of the run (its ``Φₜ`` would no longer match the broadcasts).

AFCL: one wave per class-incremental task (``tasks``; ``waves`` > 1 re-asks, within the task, the nodes whose
upload for it is missing). Each node uploads the statistics of its rows of that task; the server merges them
into the running sums (:func:`federated.afcl.server_task_update`, uploads screened and namespaced by the task the
*server* is in) and solves, so after task ``t`` the weight equals joint ridge on every row of tasks ``0..t`` of
the merged nodes (spatio-temporal invariance). A node missing one task still contributes to the others.

The server sums and solves in float64 (it enables ``jax_enable_x64``); transport is the clients' dtype (float32
by default). Every round is logged -- who answered, who failed and why, who never answered -- and the report
(plus the weights) is written to ``output-dir`` when set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flwr.app import ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from analytic.checkpoint import atomic_savez, atomic_write_text
from federated import afcl, afl, deepafl
from federated import messages as msg
from federated.flower import records, task
from federated.flower.rounds import RoundOutcome, TrackedGrid, run_round, wait_for_nodes
from federated.validation import Rejection

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run(grid, task.resolve_config(context.run_config))


def make_server_app(**overrides: Any) -> ServerApp:
    """A ``ServerApp`` with run-config ``overrides`` (keys as in :data:`task.DEFAULTS`, ``_`` or ``-``) applied
    over the run config -- for ``flwr.simulation.run_simulation``, whose Python API takes no run config."""
    fixed = {key.replace("_", "-"): value for key, value in overrides.items()}
    task.resolve_config({}, fixed)  # fail now, not inside the simulation thread
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run(grid, task.resolve_config(context.run_config, fixed))

    return server


def run(grid: Grid, config: Mapping[str, Any]) -> dict[str, Any]:
    """Run the configured protocol on ``grid``; returns (and writes to ``output-dir``) the report."""
    jax.config.update("jax_enable_x64", True)
    start = time.monotonic()
    grid = TrackedGrid(grid)
    split = task.load_split(config)
    nodes = wait_for_nodes(grid, int(config["min-clients"]), float(config["connect-timeout"]))
    if len(nodes) < int(config["min-clients"]):
        raise RuntimeError(f"only {len(nodes)} of min-clients={config['min-clients']} nodes connected within "
                           f"{config['connect-timeout']} s")
    partition_of, hello = _hello(grid, config, nodes)
    protocol = {"afl": _run_afl, "deepafl": _run_deepafl, "afcl": _run_afcl}[config["method"]]
    report, arrays = protocol(grid, config, split, sorted(partition_of), partition_of)
    # Messages that missed their deadline may still be running; wait (at most one round's deadline) until they
    # finish, so their late context write-backs cannot land in whatever protocol the caller runs next.
    late, unfinished = grid.drain(float(config["round-timeout"]))
    expected = set(range(int(config["num-partitions"])))
    report.update(method=config["method"], config=dict(config), seconds=time.monotonic() - start,
                  hello=hello, late_replies=late, unfinished_messages=unfinished,
                  missing_partitions=sorted(expected - set(report["merged_partitions"])))
    if config["output-dir"]:
        out = Path(str(config["output-dir"]))
        out.mkdir(parents=True, exist_ok=True)
        # Each file is replaced atomically, and result.json (what a waiting reader polls for) comes last, so a
        # reader never sees a partial file, and once result.json exists result.npz is complete.
        atomic_savez(out / "result.npz", arrays)
        atomic_write_text(out / "result.json", json.dumps(report, indent=2, default=str) + "\n")
    return report


def _hello(grid: TrackedGrid, config: Mapping[str, Any], nodes: list[int]) -> tuple[dict[int, int], dict[str, Any]]:
    """Round 0: every node's partition id (also warms the workers; its deadline is ``connect-timeout``)."""
    def decode(rd: RecordDict) -> int:
        info = rd.get("hello")
        if not isinstance(info, ConfigRecord) or "client_id" not in info:
            raise ValueError("hello reply carries no client_id")
        cid = info["client_id"]
        if type(cid) is not int or cid < 0:  # bool, float and str would alias or mis-sort partition ids
            raise ValueError(f"hello reply carries client_id {cid!r}; a partition id (int >= 0) is expected")
        return cid

    content = records.to_record(config=_client_config(config, round=0))
    outcome = run_round(grid, nodes, "query.hello", content, decode, "hello", float(config["connect-timeout"]))
    ids = list(outcome.decoded.values())
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"several nodes claim the same partition-id: {sorted(ids)}; check the node configs")
    log = _log("hello", 0, outcome, {}, {})
    log["answered"] = sorted(ids)
    return dict(outcome.decoded), log


def _client_config(config: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {**{key: config[key] for key in task.CLIENT_KEYS}, **extra}


def _log(kind: str, number: int, outcome: RoundOutcome, excluded: Sequence[Rejection],
         partition_of: Mapping[int, int]) -> dict[str, Any]:
    """One round's report. ``excluded`` holds the screening rejections of ``list(outcome.decoded.values())``;
    each is reported under its *node* (unique), not under the id it claimed (which a faulty node may forge)."""
    def name(node: int) -> str:
        return f"partition {partition_of[node]}" if node in partition_of else f"node {node}"

    nodes = list(outcome.decoded)
    return {
        "round": number, "type": kind, "seconds": round(outcome.seconds, 3),
        "answered": sorted(getattr(m, "client_id", -1) for m in outcome.decoded.values()),
        "failed": {name(node): reason for node, reason in outcome.failed.items()},
        "rejected": {name(nodes[r.position]): r.reason for r in excluded},
        "missing": [name(node) for node in outcome.missing],
    }


def _accepted_nodes(outcome: RoundOutcome, excluded: Sequence[Rejection]) -> list[int]:
    """The nodes whose decoded reply passed screening (rejections are keyed by position in the decoded replies)."""
    rejected = {r.position for r in excluded}
    return [node for i, node in enumerate(outcome.decoded) if i not in rejected]


def _accuracy(scores: Any, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(np.asarray(scores), axis=1) == labels)) if len(labels) else float("nan")


def _run_afl(grid: TrackedGrid, config: Mapping[str, Any], split: task.Split, nodes: list[int],
             partition_of: dict[int, int]):
    dtype = np.dtype(config["client-dtype"])
    state = afl.server_init(split.x_train.shape[1], split.classes)
    node_of: dict[int, int] = {}  # partition id -> node id of every merged client
    rounds, uploads, arrays = [], [], {}
    for wave in range(1, int(config["waves"]) + 1):
        if wave > 1 and float(config["join-timeout"]) > 0:
            wait_for_nodes(grid, int(config["num-partitions"]), float(config["join-timeout"]))
        ask = [n for n in sorted(grid.get_node_ids()) if n not in node_of.values()]
        if not ask:
            break
        content = records.to_record(config=_client_config(config, round=wave))
        outcome = run_round(grid, ask, "train.afl", content, lambda rd: records.from_record(rd, msg.AFLUpload),
                            f"afl-wave-{wave}", float(config["round-timeout"]))
        state, excluded = afl.server_update(state, list(outcome.decoded.values()), dtype=dtype)
        # Only a node whose upload was merged is known by its partition id: a rejected reply may claim any id.
        for node in _accepted_nodes(outcome, excluded):
            upload = outcome.decoded[node]
            partition_of[node], node_of[upload.client_id] = upload.client_id, node
            uploads.append(upload)
        rounds.append(_log("afl", wave, outcome, excluded, partition_of))
        rounds[-1]["merged_so_far"] = sorted(state.clients)
        if state.clients:  # the model as of this wave (the AA law makes later waves exact refinements)
            arrays[f"weight_wave_{wave}"] = np.asarray(_afl_solve(state, config))
        if len(state.clients) >= int(config["num-partitions"]):
            break
    weight = _afl_solve(state, config)
    report = {"rounds": rounds, "merged_partitions": sorted(state.clients), "count": state.count,
              "test_accuracy": _accuracy(split.x_test @ np.asarray(weight), split.y_test),
              "communication": afl.communication(uploads, weight)}
    report["client_accuracy"] = _afl_evaluate(grid, config, weight, state.count, node_of)
    return report, {"weight": np.asarray(weight), **arrays}


def _afl_solve(state: afl.AFLServerState, config: Mapping[str, Any]) -> Any:
    return afl.server_solve(state, remove_regularization=bool(config["remove-regularization"]),
                            global_gamma=float(config["global-gamma"]))


def _afl_evaluate(grid: TrackedGrid, config: Mapping[str, Any], weight: Any, count: int,
                  node_of: Mapping[int, int]) -> float | None:
    """Send the AFL answer (:class:`AFLBroadcast`) to the merged clients; their pooled local accuracy."""
    gamma = float(config["global-gamma"]) if config["remove-regularization"] else float("nan")
    content = records.to_record(msg.AFLBroadcast(np.asarray(weight), count, gamma),
                                transport_dtype=np.dtype(config["client-dtype"]),
                                config=_client_config(config, round=0))

    def decode(rd: RecordDict) -> dict[str, Any]:
        metrics = rd.get("metrics")
        if not isinstance(metrics, ConfigRecord):
            raise ValueError("evaluate reply carries no metrics")
        return dict(metrics)

    outcome = run_round(grid, sorted(node_of.values()), "evaluate.afl", content, decode, "afl-evaluate",
                        float(config["round-timeout"]))
    counted = sum(int(m["count"]) for m in outcome.decoded.values())
    return sum(int(m["correct"]) for m in outcome.decoded.values()) / counted if counted else None


def _run_afcl(grid: TrackedGrid, config: Mapping[str, Any], split: task.Split, nodes: list[int],
              partition_of: dict[int, int]):
    dtype = np.dtype(config["client-dtype"])
    state = afcl.afcl_init(split.x_train.shape[1], split.classes, float(config["global-gamma"]))
    groups = task.task_streams(config, split.y_train, int(config["num-partitions"])).classes
    rounds, tasks, arrays, merged, uploads = [], [], {}, set(), []
    number = 0
    for t, classes in enumerate(groups):
        done: set[int] = set()  # nodes whose upload for task t was merged
        for wave in range(1, int(config["waves"]) + 1):
            ask = [n for n in sorted(grid.get_node_ids()) if n not in done]
            if not ask:
                break
            number += 1
            content = records.to_record(config=_client_config(config, round=number, task=t))
            outcome = run_round(grid, ask, "train.afcl", content, lambda rd: records.from_record(rd, msg.AFLUpload),
                                f"afcl-task-{t}-wave-{wave}", float(config["round-timeout"]))
            state, excluded = afcl.server_task_update(state, list(outcome.decoded.values()), task=t, dtype=dtype)
            for node in _accepted_nodes(outcome, excluded):
                partition_of[node] = outcome.decoded[node].client_id
                done.add(node)
                uploads.append(outcome.decoded[node])
            rounds.append(_log(f"afcl task {t}", number, outcome, excluded, partition_of))
            if len(done) >= int(config["num-partitions"]):
                break
        merged |= {partition_of[n] for n in done}
        seen = np.sort(np.concatenate(groups[: t + 1]))
        rows = np.isin(split.y_test, seen)
        accuracy = (float(np.mean(np.asarray(afcl.predict(state, split.x_test[rows], seen)) == split.y_test[rows]))
                    if rows.any() else float("nan"))
        tasks.append({"task": t, "classes": classes.tolist(), "test_rows": int(rows.sum()),
                      "merged_partitions": sorted(partition_of[n] for n in done), "test_accuracy_seen": accuracy})
        arrays[f"weight_task_{t}"] = np.asarray(state.weight)
    report = {"rounds": rounds, "tasks": tasks, "merged_partitions": sorted(merged), "count": state.server.count,
              "test_accuracy": tasks[-1]["test_accuracy_seen"],
              "communication": afl.communication(uploads, state.weight)}
    return report, {"weight": np.asarray(state.weight), **arrays}


def _run_deepafl(grid: TrackedGrid, config: Mapping[str, Any], split: task.Split, nodes: list[int],
                 partition_of: dict[int, int]):
    dtype = np.dtype(config["client-dtype"])
    setup = msg.DeepAFLSetup(int(config["seed"]), int(split.x_train.shape[1]), int(split.classes),
                             int(config["phi-dim"]), int(config["block-dim"]), int(config["layers"]),
                             float(config["lam"]), float(config["deepafl-gamma"]), str(config["activation"]),
                             str(config["input-activation"]))
    server = deepafl.DeepAFLServer(setup, dtype=np.float64)
    active, rounds = list(nodes), []
    omega: msg.DeepAFLBlockBroadcast | None = None
    number = 0

    def step(kind: str, message_type: str, broadcast: Any, upload_type: type, layer: int):
        nonlocal active, number
        number += 1
        items = [setup] + ([broadcast] if broadcast is not None else [])
        content = records.to_record(*items, transport_dtype=dtype,
                                    config=_client_config(config, round=number, layer=layer))
        outcome = run_round(grid, active, message_type, content, lambda rd: records.from_record(rd, upload_type),
                            f"deepafl-{number}", float(config["round-timeout"]))
        result = (server.classifier_round if upload_type is msg.DeepAFLClassifierUpload else server.block_round)(
            list(outcome.decoded.values()))
        rejected = server.last_screen.excluded
        # The next round goes to the nodes whose upload was merged, each known by the id it was merged under.
        active = _accepted_nodes(outcome, rejected)
        partition_of.update({node: outcome.decoded[node].client_id for node in active})
        rounds.append(_log(kind, number, outcome, rejected, partition_of))
        return result

    for t in range(setup.layers + 1):
        weight = step(f"classifier {t}", "train.deepafl_classifier", omega, msg.DeepAFLClassifierUpload, t)
        if t < setup.layers:
            omega = step(f"block {t}", "train.deepafl_block", weight, msg.DeepAFLBlockUpload, t)
    # Predict with the random layers the clients drew: jax.random draws depend on the dtype, so layers rebuilt in
    # the server's float64 would not be the clients' float32 ones.
    first, blocks = deepafl.make_layers(setup, dtype=dtype)
    model = deepafl.DeepAFLModel(first, blocks, tuple(jax.numpy.asarray(o, dtype) for o in server.omegas),
                                 jax.numpy.asarray(server.weights[-1], dtype))
    merged = sorted(partition_of[n] for n in active)
    report = {"rounds": rounds, "merged_partitions": merged,
              "test_accuracy": _accuracy(deepafl.forward(model, split.x_test.astype(dtype)), split.y_test),
              "communication": server.comm.summary()}
    arrays = {"weight": np.asarray(server.weights[-1])}
    arrays.update({f"omega_{t}": np.asarray(o) for t, o in enumerate(server.omegas)})
    return report, arrays
