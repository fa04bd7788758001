"""Communication accounting shared by every federated method: bytes up/down per client and rounds."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["CommLog", "pytree_nbytes"]


def pytree_nbytes(tree: Any) -> int:
    """Bytes of all array leaves of a pytree (model parameters sent by gradient methods)."""
    import jax

    return int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass
class CommLog:
    """Running tally of one federated run: ``up[c]``/``down[c]`` bytes of client ``c``, and the number of rounds."""

    rounds: int = 0
    up: dict[Any, int] = dataclasses.field(default_factory=dict)
    down: dict[Any, int] = dataclasses.field(default_factory=dict)

    def record(self, uploads: dict[Any, int], downloads: dict[Any, int]) -> None:
        """One round: ``uploads[c]`` bytes sent by client ``c``, ``downloads[c]`` bytes it received."""
        self.rounds += 1
        for c, b in uploads.items():
            self.up[c] = self.up.get(c, 0) + int(b)
        for c, b in downloads.items():
            self.down[c] = self.down.get(c, 0) + int(b)

    def record_messages(self, uploads: Iterable[Any], broadcast: Any, recipients: Iterable[Any]) -> None:
        """One round of message objects (anything with ``client_id`` and ``nbytes``)."""
        size = 0 if broadcast is None else broadcast.nbytes
        self.record({m.client_id: m.nbytes for m in uploads}, {c: size for c in recipients})

    def summary(self) -> dict[str, float]:
        clients = sorted(set(self.up) | set(self.down), key=str)
        up = np.array([self.up.get(c, 0) for c in clients], dtype=np.float64)
        down = np.array([self.down.get(c, 0) for c in clients], dtype=np.float64)
        return {
            "rounds": self.rounds,
            "clients": len(clients),
            "up_bytes_per_client": float(up.mean()) if up.size else 0.0,
            "down_bytes_per_client": float(down.mean()) if down.size else 0.0,
            "up_bytes_total": float(up.sum()),
            "down_bytes_total": float(down.sum()),
        }
