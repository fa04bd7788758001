"""One federated round on a Flower ``Grid``: send, wait up to a deadline, sort replies into answered/failed/missing.

A client that raises comes back as an error reply (``failed``, with Flower's reason); a client that does not answer
before ``timeout`` is ``missing``; a reply that cannot be decoded is ``failed`` too. The round never raises for
one client's fault: the caller aggregates whatever answered and reports the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class RoundOutcome(NamedTuple):
    """``decoded[node]``: the decoded reply; ``failed[node]``: why it was not usable; ``missing``: never answered."""

    decoded: dict[int, Any]
    failed: dict[int, str]
    missing: list[int]
    seconds: float


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll: float = 0.25) -> list[int]:
    """Node ids once at least ``count`` nodes are connected, or whatever is connected after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() >= deadline:
            return nodes
        time.sleep(poll)


def run_round(
    grid: Grid,
    nodes: Iterable[int],
    message_type: str,
    content: RecordDict | Callable[[int], RecordDict],
    decode: Callable[[RecordDict], Any],
    group_id: str,
    timeout: float,
) -> RoundOutcome:
    """Send ``content`` (or ``content(node)``) to every node as ``message_type``; collect for ``timeout`` s."""
    nodes = list(nodes)
    outgoing = [
        Message(content(node) if callable(content) else content, dst_node_id=node, message_type=message_type,
                group_id=group_id)
        for node in nodes
    ]
    start = time.monotonic()
    replies = list(grid.send_and_receive(outgoing, timeout=timeout)) if outgoing else []
    decoded: dict[int, Any] = {}
    failed: dict[int, str] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed[node] = f"client raised (code {reply.error.code}): {_last_line(reply.error.reason)}"
            continue
        try:
            decoded[node] = decode(reply.content)
        except Exception as err:  # noqa: BLE001 - no reply, however malformed, may crash the server app
            failed[node] = f"malformed reply: {type(err).__name__}: {err}"
    missing = [n for n in nodes if n not in decoded and n not in failed]
    return RoundOutcome(decoded, failed, missing, time.monotonic() - start)


def _last_line(reason: str | None) -> str:
    lines = [s.strip() for s in (reason or "").splitlines() if s.strip()]
    return lines[-1][:300] if lines else "no reason given"
