"""Flower ``ClientApp`` for AFL, DeepAFL and AFCL: each handler answers one server message with one upload.

Message types (``<category>.<action>``):

- ``query.hello``: registration before the protocol (partition id, row count).
- ``train.afl``: AFL client stage -- :func:`federated.afl.client_stats` on the node's partition, replied as an
  :class:`~federated.messages.AFLUpload` (Zhuang et al., 2024, one round).
- ``train.deepafl_classifier`` / ``train.deepafl_block``: the two halves of each DeepAFL layer (Tang et al., 2026):
  apply the broadcast ``Ωₜ₋₁`` then upload ``(ΦₜᵀΦₜ, ΦₜᵀY)``; take ``Wₜ`` and upload ``(FₜᵀFₜ, FₜᵀRₜ)``. The math is
  :class:`federated.deepafl.DeepAFLClient`'s.
- ``train.afcl``: AFCL client stage for the task the server names (``task`` in the message's config): the same
  statistics on the node's rows of that task only (:func:`federated.flower.task.load_task_partition`; Tang et
  al., 2025, one upload per client per task).

Flower may run every message in a fresh process (deployment engine) or on any pooled worker (simulation engine),
so nothing is kept in Python between messages: the DeepAFL client's running ``Φₜ`` lives in ``context.state``.
The node's ``partition-id``/``num-partitions`` come from its node config; the data settings come with the message.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from federated import afl, deepafl
from federated import messages as msg
from federated.flower import records, task

app = ClientApp()

_STATE = "deepafl-client"


class _Job:
    """The node's view of one message: its config, partition and data."""

    def __init__(self, message: Message, context: Context, task_index: int | None = None) -> None:
        self.config = records.config_of(message.content)
        if "dataset" not in self.config:
            raise ValueError(f"{message.metadata.message_type}: the message carries no run config")
        self.partition_id = int(context.node_config["partition-id"])
        parts = int(context.node_config["num-partitions"])
        if parts != int(self.config["num-partitions"]):
            raise ValueError(f"node config num-partitions={parts} but the run expects {self.config['num-partitions']}")
        self._inject_fault()
        if self.config["client-dtype"] == "float64":
            jax.config.update("jax_enable_x64", True)
        self.dtype = np.dtype(self.config["client-dtype"])
        if task_index is None:
            self.x, self.y, self.classes = task.load_partition(self.config, self.partition_id, parts)
        else:
            self.x, self.y, self.classes = task.load_task_partition(self.config, self.partition_id, parts,
                                                                    task_index)

    def _inject_fault(self) -> None:
        fault = task.parse_faults(self.config["faults"]).get(self.partition_id)
        if fault is None or fault[1] != int(self.config["round"]):
            return
        if fault[0] == "raise":
            raise RuntimeError(f"injected fault: partition {self.partition_id} raises in round {fault[1]}")
        # "silent": answer only after the server has given up on this round.
        time.sleep(float(self.config["round-timeout"]) + 5.0)

    def reply(self, message: Message, *items: Any) -> Message:
        return Message(records.to_record(*items, transport_dtype=self.dtype), reply_to=message)


@app.query("hello")
def hello(message: Message, context: Context) -> Message:
    """Registration (round 0): the node's partition id and row count; also warms the worker before timed rounds."""
    job = _Job(message, context)
    info = {"client_id": job.partition_id, "count": int(len(job.y)), "classes": job.classes}
    return Message(RecordDict({"hello": ConfigRecord(info)}), reply_to=message)


@app.train("afl")
def afl_train(message: Message, context: Context) -> Message:
    job = _Job(message, context)
    upload = afl.client_stats(job.x, job.y, float(job.config["gamma"]), job.classes, client_id=job.partition_id,
                              dtype=job.dtype)
    return job.reply(message, upload)


@app.train("afcl")
def afcl_train(message: Message, context: Context) -> Message:
    config = records.config_of(message.content)
    if "task" not in config:
        raise ValueError("train.afcl: the message names no task")
    job = _Job(message, context, task_index=int(config["task"]))
    upload = afl.client_stats(job.x, job.y, float(job.config["gamma"]), job.classes, client_id=job.partition_id,
                              dtype=job.dtype)
    return job.reply(message, upload)


@app.evaluate("afl")
def afl_evaluate(message: Message, context: Context) -> Message:
    """Local accuracy of the broadcast global weight (the AFL server's answer)."""
    job = _Job(message, context)
    broadcast = records.from_record(message.content, msg.AFLBroadcast)
    correct = int(np.sum(np.asarray(afl.predict(broadcast.weight, job.x.astype(job.dtype))) == job.y)) if len(
        job.y) else 0
    return Message(RecordDict({"metrics": ConfigRecord({"correct": correct, "count": int(len(job.y)),
                                                         "client_id": job.partition_id})}), reply_to=message)


def _deepafl_client(job: _Job, setup: msg.DeepAFLSetup) -> deepafl.DeepAFLClient:
    return deepafl.DeepAFLClient(job.partition_id, job.x, job.y, setup, dtype=job.dtype)


def _save(context: Context, client: deepafl.DeepAFLClient) -> None:
    arrays = {"phi": Array(np.asarray(client.phi))}
    # The block output Fₜ computed for the upload is needed again when Ωₜ arrives (Φₜ₊₁ = Φₜ + FₜΩₜ).
    block_out = getattr(client, "_block_out", None)
    if block_out is not None:
        arrays["block_out"] = Array(np.asarray(block_out))
    context.state[_STATE] = ArrayRecord(array_dict=arrays)
    context.state[_STATE + ".layer"] = ConfigRecord({"layer": client.layer})


def _restore(context: Context, client: deepafl.DeepAFLClient) -> None:
    if _STATE not in context.state:
        raise ValueError(f"client {client.client_id}: no DeepAFL state; it missed the first round of this run")
    arrays = context.state[_STATE]
    client.phi = jax.numpy.asarray(arrays["phi"].numpy())
    client.layer = int(context.state[_STATE + ".layer"]["layer"])
    client._block_out = jax.numpy.asarray(arrays["block_out"].numpy()) if "block_out" in arrays else None


@app.train("deepafl_classifier")
def deepafl_classifier(message: Message, context: Context) -> Message:
    job = _Job(message, context)
    setup = records.from_record(message.content, msg.DeepAFLSetup)
    client = _deepafl_client(job, setup)
    layer = int(job.config["layer"])
    if layer > 0:
        _restore(context, client)
        client.apply_block(records.from_record(message.content, msg.DeepAFLBlockBroadcast))
    if client.layer != layer:
        raise ValueError(f"client {job.partition_id}: at layer {client.layer}, the server asks for layer {layer}")
    upload = client.classifier_upload()
    _save(context, client)
    return job.reply(message, upload)


@app.train("deepafl_block")
def deepafl_block(message: Message, context: Context) -> Message:
    job = _Job(message, context)
    setup = records.from_record(message.content, msg.DeepAFLSetup)
    client = _deepafl_client(job, setup)
    _restore(context, client)
    upload = client.block_upload(records.from_record(message.content, msg.DeepAFLClassifierBroadcast))
    _save(context, client)
    return job.reply(message, upload)
