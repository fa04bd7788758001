"""``AnalyticLinear``: a scikit-learn-style ridge classifier over the functional core.

The convenience layer over the functional core (docs/architecture.md): it holds a state pytree (``GramStats`` or
``RLSState``) and calls the core.
``partial_fit`` on any split of the data gives the same ``coef_`` as ``fit`` on all of it (the joint ridge
solution, docs/methods.md §1) -- the property every analytic learner is built on.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analytic.buffers import GaussianKernelBuffer, RandomBuffer
from analytic.checkpoint import load_state, save_state
from analytic.classes import expand_classes, trim_classes
from analytic.dtypes import resolve_dtype
from analytic.gram import GramStats, gram_accumulate_checked, gram_init, gram_solve
from analytic.health import RLSHealth, check_committed
from analytic.rls import RLSState, rls_init, rls_predict, rls_step_checked
from analytic.validation import check_classes, check_features, check_gamma, check_labels, prepare_batch

__all__ = ["AnalyticLinear"]

Buffer = RandomBuffer | GaussianKernelBuffer


def _padded_features(buffer: Buffer | None, x: jax.Array, n: jax.Array, dtype: Any) -> jax.Array:
    # Rows >= n are padding. A buffer may map a zero row to a non-zero one (a bias, a Gaussian kernel), and a
    # real row may have all-zero dense targets, so padding is masked by position, not by value.
    feats = x.astype(dtype) if buffer is None else buffer(x).astype(dtype)
    return jnp.where((jnp.arange(x.shape[0]) < n)[:, None], feats, 0.0)


@partial(jax.jit, donate_argnums=(1,))
def _gram_step(
    buffer: Buffer | None, stats: GramStats, x: jax.Array, targets: jax.Array, n: jax.Array
) -> tuple[GramStats, jax.Array]:
    # The estimator owns its statistics: donated and updated where they lie (a refused batch leaves them as they
    # were, analytic.gram.gram_accumulate_checked).
    return gram_accumulate_checked(stats, _padded_features(buffer, x, n, stats.xtx.dtype), targets, n, in_place=True)


@partial(jax.jit, donate_argnums=(1,))
def _rls_step(
    buffer: Buffer | None, state: RLSState, x: jax.Array, targets: jax.Array, n: jax.Array
) -> tuple[RLSState, RLSHealth]:
    # Donated and updated where it lies, as the Gram statistics: the step is judged before R is written
    # (analytic.host_kernels.woodbury_step), so a refused batch leaves W and R as they were.
    return rls_step_checked(state, _padded_features(buffer, x, n, state.weight.dtype), targets, in_place=True)


class AnalyticLinear:
    """Closed-form ridge classifier with optional fixed feature buffer.

    Args:
      gamma: ridge strength γ > 0.
      buffer: optional fixed feature map applied before the head (e.g. ``RandomBuffer(d, 2048)``).
      solver: ``"gram"`` accumulates ``(XᵀX, XᵀY)`` and solves at read-out (cheapest when predictions are rare);
        ``"rls"`` keeps ``W`` current after every batch by Woodbury (online use). Both give the same ``coef_``.
      dtype: accumulator dtype (default: float64 with x64 enabled, else float32).
      classes: declare the number of classes up front; labels ≥ it are then refused instead of growing the head.

    Attributes (after fitting): ``coef_`` ``(d_features, c)``, ``n_classes_``, ``n_features_in_``, ``state_``.

    Each ``partial_fit`` updates the state in place (its buffers are donated to the compiled step; on the CPU
    backend no ``d×d`` buffer is allocated per batch): arrays taken from ``state_``
    before a call are invalid after it -- copy them (``np.array(...)``) to keep them. A NumPy view of them
    (``np.asarray``) keeps them valid instead, at the cost of one copy in the next call.
    """

    def __init__(self, gamma: float = 1.0, buffer: Buffer | None = None, solver: str = "gram", dtype: Any = None,
                 classes: int | None = None) -> None:
        self.gamma = check_gamma(gamma)
        if solver not in ("gram", "rls"):
            raise ValueError(f"solver must be 'gram' or 'rls', got {solver!r}")
        classes = check_classes(classes)
        self.buffer, self.solver, self.dtype, self.classes = buffer, solver, dtype, classes
        self.state_: GramStats | RLSState | None = None
        self._coef: jax.Array | None = None

    # -- fitting -------------------------------------------------------------------------------------------------
    def _features(self, x: Any) -> jax.Array:
        dim = self.buffer.in_dim if isinstance(self.buffer, RandomBuffer) else (
            self.buffer.centers.shape[1] if self.buffer is not None else None)
        if self.state_ is not None and self.buffer is None:
            dim = self.state_.dim
        x = check_features(x, dim=dim)
        return self.buffer(x) if self.buffer is not None else x

    def _input_dim(self) -> int | None:
        if self.buffer is None:
            return None if self.state_ is None else self.state_.dim
        return self.buffer.in_dim if isinstance(self.buffer, RandomBuffer) else self.buffer.centers.shape[1]

    def partial_fit(self, x: Any, y: Any, classes: int | None = None) -> AnalyticLinear:
        """Add a batch ``x: (n, d)`` with class ids ``y: (n,)`` (or dense targets ``(n, c)``).

        ``classes`` (optional, sklearn's convention) declares the total class count on the first call. A call that
        raises leaves the estimator exactly as it was. The batch is validated, padded and encoded once
        (:func:`analytic.validation.prepare_batch`); buffer and update then run as one compiled step, and the
        batch is committed only if the new statistics are sound (one scalar read, :mod:`analytic.health`).
        """
        declared = self.classes if classes is None else check_classes(classes)
        if declared is not None and self.state_ is not None and declared < self.state_.classes:
            raise ValueError(f"classes declares {declared} classes but the estimator already has "
                             f"{self.state_.classes} class columns")
        width = self.state_.classes if self.state_ is not None else (declared or 0)
        dt = resolve_dtype(self.dtype if self.state_ is None else self.state_[0].dtype)
        batch = prepare_batch(x, y, dim=self._input_dim(), classes=max(width, declared or 0), declared=declared,
                              dtype=dt)
        state, previous = self.state_, self.state_
        if state is None:
            dim = batch.x.shape[1] if self.buffer is None else (
                self.buffer.out_dim if isinstance(self.buffer, RandomBuffer) else self.buffer.centers.shape[0])
            state = (gram_init(dim, 0, dt) if self.solver == "gram" else rls_init(dim, 0, self.gamma, dt))
        state = expand_classes(state, batch.width)
        n = np.int32(batch.n)
        if isinstance(state, GramStats):
            state, ok = _gram_step(self.buffer, state, batch.x, batch.targets, n)
            health = None
        else:
            state, health = _rls_step(self.buffer, state, batch.x, batch.targets, n)
            ok = health.ok
        feats = batch.host_x if self.buffer is None else None
        try:
            check_committed(ok, lambda: feats if feats is not None else self.buffer(jnp.asarray(batch.host_x)), dt,
                            health=health)
        except Exception:
            if previous is not None:
                # The donated state came back unchanged (only wider by this batch's new class columns).
                self.state_ = trim_classes(state, previous.classes)
            raise
        self.state_, self.classes, self._coef = state, declared, None
        return self

    def fit(self, x: Any, y: Any, classes: int | None = None) -> AnalyticLinear:
        """Forget everything, then ``partial_fit(x, y)``; on error the previous fit is kept."""
        previous = self.state_, self.classes, self._coef
        self.state_, self._coef = None, None
        try:
            return self.partial_fit(x, y, classes)
        except Exception:
            self.state_, self.classes, self._coef = previous
            raise

    # -- read-out ------------------------------------------------------------------------------------------------
    @property
    def coef_(self) -> jax.Array:
        if self.state_ is None:
            raise RuntimeError("AnalyticLinear is not fitted yet; call fit or partial_fit first")
        if self._coef is None:
            self._coef = (gram_solve(self.state_, self.gamma) if isinstance(self.state_, GramStats)
                          else self.state_.weight)
        return self._coef

    @property
    def n_classes_(self) -> int:
        return self.coef_.shape[1]

    @property
    def n_features_in_(self) -> int:
        return self.buffer.in_dim if isinstance(self.buffer, RandomBuffer) else self.state_.dim

    def decision_function(self, x: Any) -> jax.Array:
        """Logits ``φ(x) W``: ``(n, c)``."""
        w = self.coef_
        return rls_predict(RLSState(w, jnp.zeros((0, 0), w.dtype)), self._features(x))

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(jnp.argmax(self.decision_function(x), axis=1))

    def score(self, x: Any, y: Any) -> float:
        """Mean accuracy on ``(x, y)``."""
        labels = check_labels(y, n=np.shape(x)[0])
        return float(np.mean(self.predict(x) == labels))

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        if self.state_ is None:
            raise RuntimeError("nothing to save: the estimator is not fitted")
        meta = {"estimator": "AnalyticLinear", "gamma": self.gamma, "solver": self.solver, "classes": self.classes}
        return save_state(path, {"state": self.state_, "buffer": self.buffer}, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> AnalyticLinear:
        """Restore an estimator written by :meth:`save`.

        The stored ``gamma``/``solver``/``classes`` go through the constructor's validation and must agree with the
        stored state (its type, the buffer's output width, the class count); any disagreement raises
        :class:`~analytic.checkpoint.CheckpointError` naming the checkpoint.
        """
        from analytic.buffers import ACTIVATIONS
        from analytic.checkpoint import CheckpointError

        tree, meta = load_state(path)
        where = f"checkpoint {Path(path).absolute()}"
        if meta.get("estimator") != "AnalyticLinear":
            raise ValueError(f"{where} holds a {meta.get('estimator')!r} checkpoint, not AnalyticLinear")
        if set(meta) != {"estimator", "gamma", "solver", "classes"}:
            raise CheckpointError(f"{where}: metadata keys {sorted(meta)} are not those AnalyticLinear.save writes")
        if not isinstance(tree, dict) or set(tree) != {"state", "buffer"}:
            raise CheckpointError(f"{where}: the stored tree is not {{'state', 'buffer'}}")
        state, buffer = tree["state"], tree["buffer"]
        kind = GramStats if meta["solver"] == "gram" else RLSState
        if not isinstance(state, kind):
            raise CheckpointError(f"{where}: solver {meta['solver']!r} but the state is a {type(state).__name__}")
        if buffer is not None and not isinstance(buffer, RandomBuffer | GaussianKernelBuffer):
            raise CheckpointError(f"{where}: the buffer is a {type(buffer).__name__}")
        if isinstance(buffer, RandomBuffer) and buffer.activation not in ACTIVATIONS:
            raise CheckpointError(f"{where}: unknown buffer activation {buffer.activation!r}")
        width = (None if buffer is None else
                 buffer.out_dim if isinstance(buffer, RandomBuffer) else buffer.centers.shape[0])
        if width is not None and width != state.dim:
            raise CheckpointError(f"{where}: the buffer gives {width} features but the state has dim {state.dim}")
        try:
            est = cls(meta["gamma"], buffer, meta["solver"], state[0].dtype, meta["classes"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: invalid stored estimator settings: {err}") from err
        if est.classes is not None and est.classes < state.classes:
            raise CheckpointError(f"{where}: classes={est.classes} but the state has {state.classes} class columns")
        est.state_ = state
        return est
