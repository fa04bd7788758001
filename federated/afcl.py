"""AFCL: analytic federated continual learning (Tang et al., 2025, "AFCL: Analytic Federated Continual Learning for
Spatio-Temporal Invariance of Non-IID Data", arXiv 2505.12245).

A frozen backbone gives features ``F``; after the clients of tasks ``1..t`` have reported, the global classifier is
the joint ridge solution on everything seen so far (the paper's objective, §4)::

    W_t = argmin_W ‖Y_{1:t} − F_{1:t} W‖²_F + γ‖W‖²_F = (F_{1:t}ᵀF_{1:t} + γI)⁻¹ F_{1:t}ᵀY_{1:t}

whatever the split of the rows over clients (spatial) and tasks (temporal) -- the paper's *spatio-temporal
invariance* theorem. Each client uploads its task's additive statistics once (``FₖᵀFₖ``, ``FₖᵀYₖ``, one
forward pass, :func:`federated.afl.client_stats`); the server adds them (sum form of the AA law,
:func:`federated.afl.server_update`, every upload screened) and solves once per task with regularization removal
and one global γ (:func:`federated.afl.server_solve`). The paper's known/unknown class splitting (labels of a
new class get a new zero-padded one-hot column) is the declared class width: the server is built for all
``classes`` (``server_init(dim, classes)``), a column stays zero until its class arrives, and predictions are
restricted to the classes seen so far. The paper's *recursive* server update (a Woodbury/RLS step per arriving
client, the ACIL recursion with ``R = (FᵀF + γI)⁻¹``) reaches the same ``W_t``; :func:`recursive_weights`
computes it with :mod:`analytic.rls` so the two forms can be checked against each other.

An upload is namespaced by the server with its task, ``"t{task}/{client_id!r}"``: a client reports once per task
(a second upload in the same task is rejected by AFL's screening), while its id recurs across tasks. The task
index comes from the server (``task=`` or the state's counter), never from a client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic.buffers import RandomBuffer
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.rls import rls_init, rls_update
from analytic.validation import check_features, check_gamma, check_labels
from continual import metrics
from continual._wrapper import mask_unseen, positive_int, seen_mask
from federated import afl
from federated.messages import AFLUpload
from federated.streams import ClientStreams
from federated.validation import DEFAULT_PSD, Rejection

__all__ = ["AFCLState", "AFCLRun", "AFCLServer", "GradientRun", "afcl_init", "task_client_id", "server_task_update",
           "predict", "recursive_weights", "run_afcl", "evaluate", "as_streams", "fedavg_per_task"]


@register_checkpoint_type
class AFCLState(NamedTuple):
    """The server between tasks: the AFL state (summed Grams, the namespaced ids merged), the global weight
    ``(d, classes)`` solved after the last accepted wave (zeros before), the global γ and ``tasks`` -- one past
    the highest task index a wave was accepted for (the default index of the next wave)."""

    server: afl.AFLServerState
    weight: jax.Array
    gamma: float
    tasks: int = 0


def afcl_init(dim: int, classes: int, gamma: float, dtype: Any = None) -> AFCLState:
    """An empty AFCL server for ``dim`` features and ``classes`` declared classes (all tasks' classes: no client
    can widen the head) with global ridge ``gamma``."""
    gamma = check_gamma(gamma)
    if classes is None:
        raise ValueError("afcl_init: classes must be declared (the total over all tasks); a client must not "
                         "decide the head's width")
    server = afl.server_init(dim, classes, dtype)
    return AFCLState(server, jnp.zeros((int(dim), int(classes)), server.stats.xtx.dtype), gamma, 0)


def task_client_id(task: int, client_id: int | str) -> str:
    """The id an upload of ``client_id`` in ``task`` is merged under. ``repr`` keeps ``5`` and ``"5"`` apart."""
    return f"t{int(task)}/{client_id!r}"


def _namespaced(message: Any, task: int) -> Any:
    """``message`` with its id moved into the task's namespace; anything that is not an AFL upload with an int or
    str id is passed on untouched for the screening to reject (its id is never formatted here)."""
    if not isinstance(message, AFLUpload):
        return message
    cid = message.client_id
    if isinstance(cid, np.integer):
        cid = int(cid)
    if type(cid) is not int and type(cid) is not str:
        return message
    return dataclasses.replace(message, client_id=task_client_id(task, cid))


def server_task_update(state: AFCLState, uploads: Iterable[AFLUpload], *, task: int | None = None,
                       **checks: Any) -> tuple[AFCLState, list[Rejection]]:
    """Merge one wave of uploads for ``task`` (default ``state.tasks``: the next task) and re-solve; returns
    ``(state, excluded)``.

    Pure: ``state`` is never modified. ``checks`` go to :func:`federated.afl.server_update` (``psd``,
    ``probes``, ``probe_seed``, ``dtype`` -- the transport dtype). Rejected uploads are reported with their
    namespaced ids and change nothing; a wave with nothing accepted returns ``state`` itself. A later wave for
    an earlier task merges exactly (sum form); a client's second upload for one task is rejected.
    """
    if task is None:
        task = state.tasks
    elif isinstance(task, bool) or not isinstance(task, (int, np.integer)) or task < 0:
        raise ValueError(f"task must be an integer >= 0 or None, got {task!r}")
    task = int(task)
    messages = [_namespaced(m, task) for m in uploads]
    server, excluded = afl.server_update(state.server, messages, **checks)
    if server is state.server:
        return state, excluded
    # RI with one global γ: (ΣFₖᵀFₖ + γI)⁻¹ΣFₖᵀYₖ, the joint ridge solution on all rows merged.
    weight = afl.server_solve(server, remove_regularization=True, global_gamma=state.gamma)
    return AFCLState(server, weight, state.gamma, max(state.tasks, task + 1)), excluded


def predict(state_or_weight: AFCLState | Any, x: Any, seen: Any = None) -> jax.Array:
    """Class ids ``argmax(x W)`` for ``x: (n, d)``; ``seen`` (class ids) restricts the argmax to those classes
    (columns of classes not yet taught are zero and must not win)."""
    weight = state_or_weight.weight if isinstance(state_or_weight, AFCLState) else jnp.asarray(state_or_weight)
    x = check_features(x, dim=weight.shape[0])
    logits = x.astype(weight.dtype) @ weight
    if seen is not None:
        logits = mask_unseen(logits, _mask(seen, weight.shape[1]))
    return jnp.argmax(logits, axis=1)


def _mask(seen: Any, width: int) -> jax.Array:
    return jnp.asarray(seen_mask(np.asarray(seen, np.int64), width))


def as_streams(streams: ClientStreams | Sequence[Sequence[Any]], labels: np.ndarray) -> ClientStreams:
    """A :class:`~federated.streams.ClientStreams` from itself or from plain ``streams[t][k]`` index lists (then
    a task's classes are the labels first met in it)."""
    if isinstance(streams, ClientStreams):
        return streams
    tasks = [[np.asarray(p, np.int64) for p in task] for task in streams]
    if not tasks or any(len(t) == 0 for t in tasks):
        raise ValueError("streams must hold at least one task, each with at least one client")
    classes, known = [], np.zeros(0, np.int64)
    for t in tasks:
        rows = np.concatenate(t)
        if rows.size and (rows.min() < 0 or rows.max() >= labels.size):
            raise ValueError(f"streams hold row {int(rows.max())} but there are {labels.size} labelled rows")
        new = np.setdiff1d(np.unique(labels[rows]), known)
        classes.append(new)
        known = np.union1d(known, new)
    return ClientStreams(tasks, classes)


class AFCLRun(NamedTuple):
    """``weights[t]``: W after task ``t``; ``seen_accuracy[t]`` on the test rows of the classes seen by then;
    ``matrix[t, j]`` accuracy after task ``t`` on task ``j``'s classes; ``average`` (A_avg), ``last`` (A_last),
    ``forgetting`` (Chaudhry et al.), ``excluded[t]`` the rejections of task ``t``'s wave, the final ``state``.
    Accuracies are ``nan`` without test data."""

    weights: list[jax.Array]
    seen_accuracy: list[float]
    matrix: list[list[float]]
    average: float
    last: float
    forgetting: float
    excluded: list[list[Rejection]]
    state: AFCLState


def evaluate(predictions: list[Any], y_test: Any, streams: ClientStreams) -> dict[str, Any]:
    """The continual metrics (:mod:`continual.metrics`) of one prediction per task on ``y_test``."""
    y_test = np.asarray(y_test)
    seen = [streams.seen_classes(t) for t in range(streams.tasks)]
    acc = metrics.seen_accuracy(y_test, predictions, seen)
    matrix = metrics.accuracy_matrix(y_test, predictions, streams.classes)
    return {"seen_accuracy": [float(a) for a in acc], "matrix": matrix.tolist(),
            "average": metrics.average_accuracy(acc), "last": metrics.last_accuracy(acc),
            "forgetting": metrics.forgetting(matrix)}


def _features(x: Any, buffer: RandomBuffer | None) -> np.ndarray:
    x = check_features(x)
    # The buffer is shared by seed, so a client expanding its own rows gives the rows the pooled map gives.
    return np.asarray(buffer(x) if buffer is not None else x)


def run_afcl(
    x: Any, y: Any, streams: ClientStreams | Sequence[Sequence[Any]], gamma: float, *, classes: int | None = None,
    x_test: Any = None, y_test: Any = None, buffer: RandomBuffer | None = None, transport_dtype: Any = None,
    dtype: Any = None, psd: str = DEFAULT_PSD,
) -> AFCLRun:
    """Simulate AFCL on ``x: (n, d)``, labels ``y: (n,)`` and ``streams[t][k]`` (rows of client ``k`` in task
    ``t``, e.g. :func:`federated.streams.client_streams`): per task every client uploads
    :func:`federated.afl.client_stats` of its rows (``transport_dtype``: float64 or float32 statistics), the
    server merges the wave (:func:`server_task_update`) and solves. ``classes`` defaults to ``max(y) + 1`` (a
    simulation knows them; a deployment declares them); ``buffer`` expands the features client-side first.
    """
    labels = check_labels(y, name="y", classes=classes)
    feats = _features(x, buffer)
    if feats.shape[0] != labels.size:
        raise ValueError(f"x has {feats.shape[0]} rows but y has {labels.size} labels")
    classes = int(classes) if classes is not None else int(labels.max()) + 1
    streams = as_streams(streams, labels)
    state = afcl_init(feats.shape[1], classes, gamma, dtype)
    checks: dict[str, Any] = {"psd": psd, "dtype": transport_dtype}
    weights, excluded = [], []
    tdt = None if transport_dtype is None else resolve_dtype(transport_dtype)
    for t, parts in enumerate(streams.streams):
        uploads = [afl.client_stats(feats[p], labels[p], state.gamma, classes, client_id=k, dtype=tdt)
                   for k, p in enumerate(parts)]
        state, rejected = server_task_update(state, uploads, task=t, **checks)
        weights.append(state.weight)
        excluded.append(rejected)
    scores = {"seen_accuracy": [float("nan")] * streams.tasks, "matrix": [], "average": float("nan"),
              "last": float("nan"), "forgetting": float("nan")}
    if x_test is not None and y_test is not None:
        test = _features(x_test, buffer)
        preds = [np.asarray(predict(w, test, streams.seen_classes(t))) for t, w in enumerate(weights)]
        scores = evaluate(preds, y_test, streams)
    return AFCLRun(weights, scores["seen_accuracy"], scores["matrix"], scores["average"], scores["last"],
                   scores["forgetting"], excluded, state)


def recursive_weights(x: Any, y: Any, streams: ClientStreams | Sequence[Sequence[Any]], gamma: float, *,
                      classes: int | None = None, buffer: RandomBuffer | None = None) -> list[jax.Array]:
    """The paper's recursive form: one Woodbury (RLS) step per client in arrival order, task after task, with the
    ``R₀ = I/γ`` and ``W₀ = 0`` of width ``classes`` (:func:`analytic.rls.rls_update`); returns ``W`` after each
    task. Needs the rows themselves, so it is the reference the sum-form server
    (which sees only statistics) must equal, not a federated server."""
    labels = check_labels(y, name="y", classes=classes)
    feats = _features(x, buffer)
    classes = int(classes) if classes is not None else int(labels.max()) + 1
    streams = as_streams(streams, labels)
    # Starting at the declared width is the known/unknown split with every column reserved up front: a column
    # stays exactly zero until its class's rows arrive, as the zero-padded growth would leave it (and the
    # recursion compiles once per row bucket, not once per width).
    state = rls_init(feats.shape[1], classes, gamma, jnp.asarray(feats).dtype)
    out = []
    for parts in streams.streams:
        for p in parts:
            if len(p):
                state = rls_update(state, feats[p], labels[p], classes=classes)
        out.append(state.weight)
    return out


class AFCLServer:
    """A thin stateful wrapper: ``AFCLServer(dim, classes, gamma).update(uploads)`` per task, ``.weight``,
    ``.predict(x, seen)``. A wave that raises leaves the server unchanged (the functional core is pure)."""

    def __init__(self, dim: int, classes: int, gamma: float, dtype: Any = None) -> None:
        self.state = afcl_init(dim, classes, gamma, dtype)

    def update(self, uploads: Iterable[AFLUpload], task: int | None = None, **checks: Any) -> list[Rejection]:
        self.state, excluded = server_task_update(self.state, uploads, task=task, **checks)
        return excluded

    @property
    def weight(self) -> jax.Array:
        return self.state.weight

    @property
    def tasks(self) -> int:
        return self.state.tasks

    def predict(self, x: Any, seen: Any = None) -> jax.Array:
        return predict(self.state, x, seen)


class GradientRun(NamedTuple):
    """A gradient baseline fine-tuned task after task: ``params[t]`` after task ``t`` and the metrics of
    :class:`AFCLRun`."""

    params: list[Any]
    seen_accuracy: list[float]
    matrix: list[list[float]]
    average: float
    last: float
    forgetting: float


def fedavg_per_task(
    x: Any, y: Any, streams: ClientStreams | Sequence[Sequence[Any]], *, classes: int | None = None,
    x_test: Any = None, y_test: Any = None, mu: float = 0.0, rounds: int = 20, local_epochs: int = 1,
    batch_size: int = 32, lr: float = 0.1, client_fraction: float = 0.1, momentum: float = 0.0, hidden: int = 0,
    seed: int = 0,
) -> GradientRun:
    """FedAvg (``mu = 0``) or FedProx (``mu > 0``) of :mod:`federated.baselines` run ``rounds`` rounds per task on
    that task's clients only, each task starting from the previous task's parameters (no replay): the gradient
    federated continual baseline whose forgetting AFCL removes. Predictions are restricted to the seen classes,
    as AFCL's are.
    """
    from federated import baselines

    x32 = np.asarray(check_features(x), np.float32)
    labels = check_labels(y, name="y", classes=classes, n=x32.shape[0])
    classes = int(classes) if classes is not None else int(labels.max()) + 1
    streams = as_streams(streams, labels)
    rounds = positive_int(rounds, "rounds")
    local_epochs = positive_int(local_epochs, "local_epochs")
    batch_size = positive_int(batch_size, "batch_size")
    if not 0 < client_fraction <= 1:
        raise ValueError(f"client_fraction must be in (0, 1], got {client_fraction!r}")
    if not lr > 0 or not mu >= 0:
        raise ValueError(f"lr must be > 0 and mu >= 0, got lr={lr!r}, mu={mu!r}")
    hidden = positive_int(hidden, "hidden", 0)
    params, history = None, []
    for t, parts in enumerate(streams.streams):
        if any(len(p) for p in parts):
            # FedAvg's own round loop on this task's clients only, continuing from the previous task's model.
            params = baselines.fedavg(
                x32, labels, parts, classes=classes, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size,
                lr=lr, client_fraction=client_fraction, mu=mu, hidden=hidden, momentum=momentum, seed=seed + t,
                initial_params=params).params
        elif params is None:
            params = baselines.init_params(jax.random.PRNGKey(seed), x32.shape[1], classes, hidden)
        history.append(params)
    scores = {"seen_accuracy": [float("nan")] * streams.tasks, "matrix": [], "average": float("nan"),
              "last": float("nan"), "forgetting": float("nan")}
    if x_test is not None and y_test is not None:
        test = jnp.asarray(check_features(x_test, dim=x32.shape[1]), jnp.float32)
        preds = []
        for t, p in enumerate(history):
            logits = mask_unseen(baselines.apply_model(p, test), _mask(streams.seen_classes(t), classes))
            preds.append(np.asarray(jnp.argmax(logits, axis=1)))
        scores = evaluate(preds, y_test, streams)
    return GradientRun(history, scores["seen_accuracy"], scores["matrix"], scores["average"], scores["last"],
                       scores["forgetting"])
