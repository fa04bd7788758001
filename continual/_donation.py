"""In-place head updates for the class wrappers: the compiled step may consume the head it updates.

A ``d×d`` head (``ΦᵀΦ`` of an 8192-wide buffer is 512 MB in float64) rebuilt in a fresh buffer on every batch
costs an allocation, page faults and a copy each time. A functional ``update(state, x)`` must not consume
``state`` -- the caller may still use it -- but a :class:`~continual._wrapper.ContinualClassifier` owns its
state, so while it runs an update inside :func:`donating`, the learners' Gram steps (decorated with
:func:`head_step`) *donate* the head to the compiled program, which updates it where it lies
(:func:`analytic.gram_accumulate_checked` with ``in_place=True``).

The guarantee that a call which raises leaves the learner as it was still holds: a refused batch is decided
before anything is written, so the step hands back the old values; :func:`commit` records the state to restore
(the head the step returned, trimmed to the old class count by :func:`analytic.classes.trim_classes`) before it
raises, and the wrapper keeps that state.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax

from analytic.health import check_committed

__all__ = ["Donation", "donating", "head_step", "commit"]


class Donation:
    """Permission to donate heads within :func:`donating`; ``restored`` is the state to keep after a refusal."""

    def __init__(self) -> None:
        self.restored: Any = None


_ACTIVE: contextvars.ContextVar[Donation | None] = contextvars.ContextVar("analytic_donation", default=None)


@contextlib.contextmanager
def donating() -> Iterator[Donation]:
    """Within this context the :func:`head_step` functions donate their head argument."""
    donation = Donation()
    token = _ACTIVE.set(donation)
    try:
        yield donation
    finally:
        _ACTIVE.reset(token)


def head_step(*static: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Jit ``fun(first, head, ..., in_place=...)`` twice: as is (``in_place=False``), and donating ``head`` (the
    second positional argument) with ``in_place=True``, the variant called within :func:`donating`. ``static``
    names further static arguments."""

    def wrap(fun: Callable[..., Any]) -> Callable[..., Any]:
        names = ("in_place", *static)
        plain = jax.jit(fun, static_argnames=names)
        donated = jax.jit(fun, static_argnames=names, donate_argnums=(1,))

        @functools.wraps(fun)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _ACTIVE.get() is not None:
                return donated(*args, in_place=True, **kwargs)
            return plain(*args, in_place=False, **kwargs)

        return call

    return wrap


def commit(ok: Any, features: Callable[[], Any], dtype: Any, restore: Callable[[], Any] | None = None,
           **kwargs: Any) -> None:
    """:func:`analytic.health.check_committed`; if it raises within :func:`donating`, ``restore()`` -- the
    learner's state as before the call, rebuilt from what the donating step returned -- is recorded first."""
    try:
        check_committed(ok, features, dtype, stacklevel=kwargs.pop("stacklevel", 3) + 1, **kwargs)
    except Exception:
        donation = _ACTIVE.get()
        if donation is not None and restore is not None:
            donation.restored = restore()
        raise
