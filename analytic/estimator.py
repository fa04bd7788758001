"""``AnalyticLinear``: a scikit-learn ridge classifier over the functional core.

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
from analytic.sklearn_api import ClassLabels, LabelledClassifier, as_label_vector, encode_labels
from analytic.validation import check_classes, check_gamma, prepare_batch

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


class AnalyticLinear(LabelledClassifier):
    """Closed-form ridge classifier with optional fixed feature buffer; a scikit-learn estimator.

    Args:
      gamma: ridge strength γ > 0.
      buffer: optional fixed feature map applied before the head (e.g. ``RandomBuffer(d, 2048)``).
      solver: ``"gram"`` accumulates ``(XᵀX, XᵀY)`` and solves at read-out (cheapest when predictions are rare);
        ``"rls"`` keeps ``W`` current after every batch by Woodbury (online use). Both give the same ``coef_``.
      dtype: accumulator dtype (default: float64 with x64 enabled, else float32).
      classes: declare the number of classes up front; labels ≥ it are then refused instead of growing the head.

    The arguments are stored as given and validated by ``fit``/``partial_fit`` (scikit-learn's rule). ``y`` is
    class labels ``(n,)`` (:class:`analytic.sklearn_api.ClassLabels`: non-negative integers are column ids,
    anything else is mapped to columns) or dense targets ``(n, c)`` with ``c ≥ 2`` (ridge regression on ``c``
    columns, read out by argmax).

    Attributes (after fitting): ``coef_`` ``(d_features, c)``, ``classes_``, ``n_classes_``, ``n_features_in_``,
    ``state_``.

    Each ``partial_fit`` updates the state in place (its buffers are donated to the compiled step; on the CPU
    backend no ``d×d`` buffer is allocated per batch): arrays taken from ``state_``
    before a call are invalid after it -- copy them (``np.array(...)``) to keep them. A NumPy view of them
    (``np.asarray``) keeps them valid instead, at the cost of one copy in the next call.
    """

    def __init__(self, gamma: float = 1.0, buffer: Buffer | None = None, solver: str = "gram", dtype: Any = None,
                 classes: int | None = None) -> None:
        self.gamma, self.buffer, self.solver, self.dtype, self.classes = gamma, buffer, solver, dtype, classes
        self._state: GramStats | RLSState | None = None
        self._labels: ClassLabels | None = None
        self._declared: int | None = None
        self._fit_buffer: Buffer | None = None
        self._fit_gamma: float | None = None
        # The solve of the current statistics, cached in a holder that a read-out fills in place (reading must not
        # change the estimator's attributes, scikit-learn's rule).
        self._coef_cache: list[jax.Array | None] = [None]

    # -- fitting -------------------------------------------------------------------------------------------------
    def _checked(self) -> tuple[float, int | None]:
        """(γ, declared class count) validated; ``ValueError``/``TypeError`` name the argument."""
        gamma = check_gamma(self.gamma)
        if self.solver not in ("gram", "rls"):
            raise ValueError(f"solver must be 'gram' or 'rls', got {self.solver!r}")
        if self.buffer is not None and not isinstance(self.buffer, RandomBuffer | GaussianKernelBuffer):
            raise TypeError(f"buffer must be a RandomBuffer, a GaussianKernelBuffer or None, got "
                            f"{type(self.buffer).__name__}")
        return gamma, check_classes(self.classes)

    def _make_buffer(self, in_dim: int) -> Buffer | None:
        """The feature map of a new fit (subclasses may build one from the input width)."""
        return self.buffer

    def _input_dim(self) -> int | None:
        buffer = self._fit_buffer if self._state is not None else self.buffer
        if buffer is None:
            return None if self._state is None else self._state.dim
        return buffer.in_dim if isinstance(buffer, RandomBuffer) else buffer.centers.shape[1]

    def partial_fit(self, x: Any, y: Any, classes: Any = None) -> AnalyticLinear:
        """Add a batch ``x: (n, d)`` with labels ``y: (n,)`` (or dense targets ``(n, c)``).

        ``classes`` (optional, scikit-learn's convention: all labels, or their count) fixes the label set on the
        first call. A call that raises leaves the estimator exactly as it was. The batch is validated, padded and
        encoded once (:func:`analytic.validation.prepare_batch`); buffer and update then run as one compiled step,
        and the batch is committed only if the new statistics are sound (one scalar read, :mod:`analytic.health`).
        """
        gamma, declared_param = self._checked()
        if self._state is not None:
            self._refuse_changed({"gamma": gamma}, {"gamma": self._fit_gamma})
        x = self._check_input(x, self._input_dim())
        before = self._declared if self._state is not None else declared_param
        if y is not None and not hasattr(y, "ndim"):
            y = np.asarray(y)
        dense = y is not None and np.ndim(y) == 2 and np.shape(y)[1] > 1
        if dense:
            if self._labels is not None and self._labels.values is not None:
                raise ValueError("y: dense targets given to an estimator fitted on labels other than class ids")
            if classes is not None and np.ndim(classes) > 0:
                raise TypeError("classes must be a class count for dense targets")
            labels, targets = ClassLabels(None), y
            declared = before if classes is None else check_classes(classes)
            if declared is not None and before is not None:
                declared = max(declared, before)
        else:
            labels, targets, declared = encode_labels(self._labels, as_label_vector(y), classes, before)
        if declared is not None and self._state is not None and declared < self._state.classes:
            raise ValueError(f"classes declares {declared} classes but the estimator already has "
                             f"{self._state.classes} class columns")
        width = self._state.classes if self._state is not None else (declared or 0)
        dt = resolve_dtype(self.dtype if self._state is None else self._state[0].dtype)
        batch = prepare_batch(x, targets, dim=None, classes=max(width, declared or 0), declared=declared, dtype=dt,
                              validate=False)
        state, previous = self._state, self._state
        buffer = self._fit_buffer if state is not None else self._make_buffer(batch.x.shape[1])
        if state is None:
            dim = batch.x.shape[1] if buffer is None else (
                buffer.out_dim if isinstance(buffer, RandomBuffer) else buffer.centers.shape[0])
            state = (gram_init(dim, 0, dt) if self.solver == "gram" else rls_init(dim, 0, gamma, dt))
        state = expand_classes(state, batch.width)
        n = np.int32(batch.n)
        if isinstance(state, GramStats):
            state, ok = _gram_step(buffer, state, batch.x, batch.targets, n)
            health = None
        else:
            state, health = _rls_step(buffer, state, batch.x, batch.targets, n)
            ok = health.ok
        feats = batch.host_x if buffer is None else None
        try:
            check_committed(ok, lambda: feats if feats is not None else buffer(jnp.asarray(batch.host_x)), dt,
                            health=health)
        except Exception:
            if previous is not None:
                # The donated state came back unchanged (only wider by this batch's new class columns).
                self._state = trim_classes(state, previous.classes)
            raise
        self._state, self._labels, self._declared, self._coef_cache[0] = state, labels, declared, None
        self._fit_buffer, self._fit_gamma = buffer, gamma
        return self

    # -- read-out ------------------------------------------------------------------------------------------------
    def _fitted(self) -> bool:
        return self._state is not None

    def _width(self) -> int:
        return int(self._state.classes)

    @property
    def state_(self) -> GramStats | RLSState | None:
        """The statistics (``GramStats``) or the recursion's state (``RLSState``); ``None`` before fitting."""
        return self._state

    @property
    def buffer_(self) -> Buffer | None:
        """The feature map in use (``buffer``, or the one a subclass built on the first batch)."""
        self._require_fitted()
        return self._fit_buffer

    @property
    def coef_(self) -> jax.Array:
        self._require_fitted()
        if self._coef_cache[0] is None:
            self._coef_cache[0] = (gram_solve(self._state, self._fit_gamma) if isinstance(self._state, GramStats)
                                   else self._state.weight)
        return self._coef_cache[0]

    @property
    def n_classes_(self) -> int:
        return self.coef_.shape[1]

    @property
    def n_features_in_(self) -> int:
        self._require_fitted()
        return self._input_dim()

    def _scores(self, x: Any) -> jax.Array:
        x = jnp.asarray(self._check_input(x, self._input_dim()))
        feats = x if self._fit_buffer is None else self._fit_buffer(x)
        w = self.coef_
        return rls_predict(RLSState(w, jnp.zeros((0, 0), w.dtype)), feats)

    # -- persistence ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        self._require_fitted()
        meta = {"estimator": "AnalyticLinear", "gamma": self._fit_gamma, "solver": self.solver,
                "classes": self._declared, "labels": self._labels.to_json()}
        return save_state(path, {"state": self._state, "buffer": self._fit_buffer}, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> AnalyticLinear:
        """Restore an estimator written by :meth:`save`.

        The stored ``gamma``/``solver``/``classes`` go through the constructor's validation and must agree with the
        stored state (its type, the buffer's output width, the class count); any disagreement raises
        :class:`~analytic.checkpoint.CheckpointError` naming the checkpoint.
        """
        from analytic.buffers import ACTIVATIONS
        from analytic.checkpoint import CheckpointError

        if cls is not AnalyticLinear:  # a subclass's own arguments are not in the checkpoint
            raise TypeError(f"{cls.__name__}.load is not available: its checkpoint holds an AnalyticLinear "
                            "(load it with AnalyticLinear.load)")
        tree, meta = load_state(path)
        where = f"checkpoint {Path(path).absolute()}"
        if meta.get("estimator") != "AnalyticLinear":
            raise ValueError(f"{where} holds a {meta.get('estimator')!r} checkpoint, not AnalyticLinear")
        if set(meta) - {"labels"} != {"estimator", "gamma", "solver", "classes"}:
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
            gamma, declared = est._checked()
            labels = ClassLabels.from_json(meta.get("labels"), state.classes)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: invalid stored estimator settings: {err}") from err
        if declared is not None and declared < state.classes:
            raise CheckpointError(f"{where}: classes={declared} but the state has {state.classes} class columns")
        est._state, est._labels, est._declared, est._fit_buffer, est._fit_gamma = state, labels, declared, buffer, gamma
        return est
