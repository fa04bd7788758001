"""One federated round on a Flower ``Grid``: send, wait up to a deadline, sort replies into answered/failed/missing.

A client that raises comes back as an error reply (``failed``, with Flower's reason); a client that does not answer
before ``timeout`` is ``missing``; a reply that cannot be decoded is ``failed`` too. The round never raises for
one client's fault: the caller aggregates whatever answered and reports the rest.

A message left unanswered at its round's deadline is still running on its node, and when it finishes Flower
writes that node's ``Context`` back *as it was when the message started*. If a later protocol in the same run
has meanwhile saved state in that context (DeepAFL keeps each client's ``Φₜ`` there), the late write-back erases
it and a healthy client fails a later round. :class:`TrackedGrid` remembers every unanswered message, and the
server drains them (:meth:`TrackedGrid.drain`) before it starts another protocol.
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


class TrackedGrid:
    """A ``Grid`` whose ``send_and_receive`` remembers the messages it sent that were not answered in time."""

    def __init__(self, grid: Grid, poll: float = 0.1) -> None:
        self.grid, self.poll = grid, poll
        self.unanswered: set[str] = set()

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def _collect(self, ids: set[str], timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        replies: list[Message] = []
        while ids:
            got = list(self.grid.pull_messages(ids))
            replies.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not ids or time.monotonic() >= deadline:
                break
            time.sleep(self.poll)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        ids = set(self.grid.push_messages(messages))
        replies = self._collect(ids, timeout)
        self.unanswered |= ids  # what is left in ids never answered
        return replies

    def drain(self, timeout: float) -> tuple[int, int]:
        """Wait up to ``timeout`` s for every unanswered message to finish on its node (their replies are
        discarded: their rounds are over); returns ``(finished late, still running)``."""
        before = len(self.unanswered)
        ids = set(self.unanswered)
        self._collect(ids, timeout)
        self.unanswered = ids
        return before - len(ids), len(ids)


def wait_for_nodes(grid: Grid | TrackedGrid, count: int, timeout: float, poll: float = 0.25) -> list[int]:
    """Node ids once at least ``count`` nodes are connected, or whatever is connected after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count or time.monotonic() >= deadline:
            return nodes
        time.sleep(poll)


def run_round(
    grid: Grid | TrackedGrid,
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
