"""DeepAFL: deep analytic federated learning with residual random blocks (Tang et al., 2026).

Shared by seed: an input layer ``Φ₀ = σ₀(XA + b)`` and ``T`` random blocks ``Fₜ = σ(ΦₜBₜ + cₜ)``
(:class:`analytic.RandomBuffer`, biases on, PyTorch ``nn.Linear`` init as in the authors' code). For t = 0..T:

- classifier ``Wₜ = (ΦₜᵀΦₜ + λI)⁻¹ΦₜᵀY`` from the summed client Grams (``analytic.ridge_solve``);
- residual ``Rₜ = Y − ΦₜWₜ``; ``Ωₜ = argmin ‖Rₜ − FₜΩWₜ‖² + γ‖Ω‖²``, i.e. ``FᵀF Ω WWᵀ + γΩ = FᵀR Wᵀ``, solved by
  :func:`omega_solve`; then ``Φₜ₊₁ = Φₜ + FₜΩₜ``.

Prediction uses the last layer: ``Φ_T W_T``. Clients send ``ΦₜᵀΦₜ, ΦₜᵀY`` and ``FₜᵀFₜ, FₜᵀRₜ`` (2T + 1 rounds,
:mod:`federated.messages`); every quantity is a sum over clients, so the model equals the one trained on the pooled
data for any partition. The authors' settings: ``d_Φ = d_F = 1024, T = 20, λ = 1, γ = 0.05``, GELU blocks, a tanh
input layer whatever the block activation, float32 throughout (``dtype=np.float32``).

Layers: :class:`DeepAFLClient` / :class:`DeepAFLServer` speak the messages (a Flower app can wrap them);
:func:`run_federated` drives them; :func:`fit_centralized` trains on pooled data; :class:`DeepAFL` is the
scikit-learn style wrapper (``fit``, ``fit_federated``, ``predict``, ``score``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from analytic import RandomBuffer, gram_accumulate, gram_init, gram_update, host_kernels, ridge_fit, ridge_solve
from analytic.buffers import learner_buffer
from analytic.checkpoint import register_checkpoint_type
from analytic.dtypes import resolve_dtype
from analytic.host_kernels import matmul
from analytic.validation import check_features, check_gamma, check_labels
from federated import messages as msg
from federated.afl import pad_client_data, screen_and_merge
from federated.comm import CommLog
from federated.validation import (
    DEFAULT_PSD,
    PROBES,
    Rejection,
    ScreenResult,
    describe_id,
    normalize_client_id,
    screen,
    warn_rejections,
)

__all__ = ["DeepAFLModel", "make_layers", "omega_solve", "forward", "fit_centralized", "DeepAFLClient",
           "DeepAFLServer", "run_federated", "DeepAFL"]


@register_checkpoint_type
class DeepAFLModel(NamedTuple):
    """``input_layer`` (Φ₀), ``blocks`` (T RandomBuffers), ``omegas`` (T × ``(d_F, d_Φ)``), ``weight`` W_T ``(d_Φ, c)``.
    """

    input_layer: RandomBuffer
    blocks: tuple[RandomBuffer, ...]
    omegas: tuple[jax.Array, ...]
    weight: jax.Array


def make_layers(setup: msg.DeepAFLSetup, init: str = "torch_linear", dtype: Any = None, layers: Any = None):
    """The shared random layers ``(Φ₀ layer, (F₀..F_{T−1}))`` from ``setup.seed`` -- identical on every host.

    They are drawn in float32 and cast to ``dtype``, so a float32 and a float64 run with the same seed use the
    same layers (and hosts without x64 can join a float64 run's seed). ``layers``: given layers instead (e.g.
    another implementation's, through :meth:`analytic.RandomBuffer.from_weights`), checked against ``setup`` and
    cast to ``dtype``; the layers a seed draws, given back, reproduce the seeded run bit for bit.
    """
    dt = resolve_dtype(dtype)
    if layers is None:
        return _make_layers(setup, init, dt)
    return _given_layers(setup, layers, dt)


def _given_layers(setup: msg.DeepAFLSetup, layers: Any, dtype: np.dtype):
    if not isinstance(layers, (tuple, list)) or len(layers) != 2 or not isinstance(layers[1], (tuple, list)):
        raise TypeError("layers must be (input layer, (block_0, ..., block_{T-1})) of analytic.RandomBuffer")
    first, blocks = layers
    if len(blocks) != int(setup.layers):
        raise ValueError(f"layers has {len(blocks)} blocks but the setup has layers={setup.layers}")
    specs = [("input layer", first, setup.in_dim, setup.phi_dim, setup.input_activation)]
    specs += [(f"block {t}", b, setup.phi_dim, setup.block_dim, setup.activation) for t, b in enumerate(blocks)]
    # The learners' check of a given buffer (type, in/out widths, activation; cast to dtype).
    out = [learner_buffer(layer, n_in, n_out, activation, None, "", dtype, name=name)
           for name, layer, n_in, n_out, activation in specs]
    return out[0], tuple(out[1:])


# Simulated clients in one process share the draw; real clients each rebuild it from the seed.
@functools.lru_cache(maxsize=4)
def _make_layers(setup: msg.DeepAFLSetup, init: str, dtype: np.dtype):
    keys = jax.random.split(jax.random.PRNGKey(int(setup.seed)), int(setup.layers) + 1)

    def layer(n_in: int, n_out: int, activation: str, key: jax.Array) -> RandomBuffer:
        buffer = RandomBuffer(n_in, n_out, activation, key, init, True, jnp.float32)
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), buffer)

    first = layer(setup.in_dim, setup.phi_dim, setup.input_activation, keys[0])
    blocks = tuple(layer(setup.phi_dim, setup.block_dim, setup.activation, k) for k in keys[1:])
    return first, blocks


@functools.partial(jax.jit, static_argnames=("thin",))
def omega_solve(
    block_gram: jax.Array, block_residual: jax.Array, weight: jax.Array, gamma: Any, thin: bool = True
) -> jax.Array:
    """``Ω (d_F, d_Φ)`` solving ``FᵀF Ω WWᵀ + γΩ = FᵀR Wᵀ`` (DeepAFL, Tang et al. 2026, the Ω sub-problem).

    With ``FᵀF = U₁Λ₁U₁ᵀ`` and ``WWᵀ = U₂Λ₂U₂ᵀ`` the equation decouples: ``Ω = U₁[(U₁ᵀFᵀRWᵀU₂) ⊘ (λ₁ᵢλ₂ⱼ + γ)]U₂ᵀ``
    (equivalently ``(WWᵀ ⊗ FᵀF + γI) vec Ω = vec(FᵀRWᵀ)``, a ``d_F·d_Φ`` system, tested against this).
    ``thin=False`` is that literal form (``eigh`` of the ``d_Φ×d_Φ`` matrix ``WWᵀ``). ``thin=True`` (default)
    takes the second eigendecomposition from the ``c×c`` matrix ``WᵀW = VΛ₂Vᵀ`` instead: the eigenvectors of
    ``WWᵀ`` with λ₂ ≠ 0 are ``WVΛ₂^{-1/2}``, the others meet a zero right-hand side, so
    ``Ω = U₁[(U₁ᵀFᵀRV) ⊘ (λ₁ᵢλ₂ⱼ + γ)]VᵀWᵀ`` exactly, at ``O(d_F³ + d_F·d_Φ·c)`` instead of
    ``O(d_F³ + d_Φ³)``. Specific to DeepAFL's sandwiched least squares, so it lives here, not in the core.
    """
    lam1, u1 = host_kernels.eigh(block_gram)
    if thin:
        lam2, v = host_kernels.eigh(matmul(weight.T, weight))
        rhs, right = matmul(block_residual, v), matmul(v.T, weight.T)
    else:
        lam2, u2 = host_kernels.eigh(matmul(weight, weight.T))
        rhs = matmul(block_residual, matmul(weight.T, u2))
        right = u2.T
    # Both matrices are PSD; rounding can leave eigenvalues at -1e-16·λmax, which must not cancel γ.
    lam1, lam2 = jnp.maximum(lam1, 0.0), jnp.maximum(lam2, 0.0)
    core = matmul(u1.T, rhs) / (lam1[:, None] * lam2[None, :] + gamma)
    return matmul(matmul(u1, core), right)


@jax.jit
def forward(model: DeepAFLModel, x: jax.Array) -> jax.Array:
    """Logits ``Φ_T W_T`` for ``x: (n, d)`` (no validation; see :meth:`DeepAFL.decision_function`)."""
    phi = model.input_layer(x)
    for block, omega in zip(model.blocks, model.omegas):
        phi = phi + matmul(block(phi), omega)
    return matmul(phi, model.weight)


def _check_setup(setup: msg.DeepAFLSetup) -> msg.DeepAFLSetup:
    for name in ("in_dim", "classes", "phi_dim", "block_dim"):
        if int(getattr(setup, name)) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(setup, name)!r}")
    if int(setup.layers) < 0:
        raise ValueError(f"layers (T) must be >= 0, got {setup.layers!r}")
    check_gamma(setup.lam, "lam")
    check_gamma(setup.gamma, "gamma")
    return setup


def fit_centralized(
    x: Any, y: Any, setup: msg.DeepAFLSetup, init: str = "torch_linear", dtype: Any = None, layers: Any = None,
) -> DeepAFLModel:
    """DeepAFL on pooled data ``x: (n, d)``, labels ``y: (n,)`` -- the reference the federated run must equal.
    ``layers``: given random layers (:func:`make_layers`)."""
    _check_setup(setup)
    dt = resolve_dtype(dtype)
    x = check_features(x, dim=setup.in_dim).astype(dt)
    labels = check_labels(y, classes=setup.classes, n=x.shape[0])
    targets = jax.nn.one_hot(jnp.asarray(labels), setup.classes, dtype=dt)
    first, blocks = make_layers(setup, init, dt, layers)
    phi, omegas = first(x), []
    for block in blocks:
        w = ridge_fit(phi, targets, setup.lam, form="primal")
        residual = targets - matmul(phi, w)
        features = block(phi)  # Fₜ, kept for Φₜ₊₁ = Φₜ + FₜΩₜ (recomputing it cost a third of the layer)
        stats = gram_update(gram_init(setup.block_dim, setup.classes, dt), features, residual)
        omegas.append(omega_solve(stats.xtx, stats.xty, w, setup.gamma))
        phi = _add_product(phi, features, omegas[-1])
    w = ridge_fit(phi, targets, setup.lam, form="primal")
    return DeepAFLModel(first, blocks, tuple(omegas), w)


@jax.jit
def _masked_stats(features: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(FᵀF, FᵀT)`` over the real rows only (``mask`` is 1 on real rows, 0 on padding)."""
    dim, width = features.shape[1], targets.shape[1]
    stats = gram_accumulate(gram_init(dim, width, features.dtype), features * mask[:, None], targets)
    return stats.xtx, stats.xty


@jax.jit
def _block_stats(block: RandomBuffer, phi: jax.Array, targets: jax.Array, weight: jax.Array, mask: jax.Array):
    """``Fₜ = σ(ΦₜBₜ + cₜ)`` and the block upload ``(FₜᵀFₜ, FₜᵀRₜ)`` with ``Rₜ = Y − ΦₜWₜ`` (padding masked)."""
    features = block(phi)
    residual = (targets - matmul(phi, weight)) * mask[:, None]
    return (features, *_masked_stats(features, residual, mask))


@jax.jit
def _add_product(phi: jax.Array, features: jax.Array, omega: jax.Array) -> jax.Array:
    return phi + matmul(features, omega)


class DeepAFLClient:
    """One client: holds its rows and its current ``Φₜ``; answers each server broadcast with an upload.

    Rows are zero-padded to a power of two and masked out of every statistic, so a simulation of many clients of
    different sizes reuses a few compiled programs; a client may hold no rows (it then uploads zeros).
    """

    def __init__(self, client_id: int, x: Any, y: Any, setup: msg.DeepAFLSetup, init: str = "torch_linear",
                 dtype: Any = None, layers: Any = None) -> None:
        _check_setup(setup)
        self.client_id, self.setup, self.dtype = int(client_id), setup, resolve_dtype(dtype)
        x, self.targets, self.count = pad_client_data(x, y, setup.classes, self.dtype, name=f"client {client_id}")
        if x.shape[1] != setup.in_dim:
            raise ValueError(f"client {client_id} x has {x.shape[1]} features, the setup says {setup.in_dim}")
        self.mask = jnp.asarray(np.arange(x.shape[0]) < self.count, self.dtype)
        self.first, self.blocks = make_layers(setup, init, self.dtype, layers)
        self.phi = self.first(x)
        self.layer = 0
        self._block_out: jax.Array | None = None

    def classifier_upload(self) -> msg.DeepAFLClassifierUpload:
        gram, cross = _masked_stats(self.phi, self.targets, self.mask)
        return msg.DeepAFLClassifierUpload(self.client_id, self.layer, np.asarray(gram), np.asarray(cross), self.count)

    def block_upload(self, broadcast: msg.DeepAFLClassifierBroadcast) -> msg.DeepAFLBlockUpload:
        if broadcast.layer != self.layer:
            raise ValueError(f"client {self.client_id}: broadcast for layer {broadcast.layer}, at layer {self.layer}")
        weight = jnp.asarray(broadcast.weight, self.dtype)
        self._block_out, gram, cross = _block_stats(self.blocks[self.layer], self.phi, self.targets, weight,
                                                    self.mask)
        return msg.DeepAFLBlockUpload(self.client_id, self.layer, np.asarray(gram), np.asarray(cross), self.count)

    def apply_block(self, broadcast: msg.DeepAFLBlockBroadcast) -> None:
        if broadcast.layer != self.layer or self._block_out is None:
            raise ValueError(f"client {self.client_id}: block broadcast for layer {broadcast.layer} out of order")
        self.phi = _add_product(self.phi, self._block_out, jnp.asarray(broadcast.omega, self.dtype))
        self._block_out, self.layer = None, self.layer + 1


class DeepAFLServer:
    """The server: screens uploads, sums them (:func:`federated.afl.screen_and_merge`: with the default
    ``psd="probe"`` the round's summed Gram is certified PSD, else the round is screened exactly), solves
    ``Wₜ`` / ``Ωₜ``, logs bytes. The probe directions come from a generator seeded once per server from
    ``probe_seed`` (``None``: OS entropy, unknown to the clients) and are fresh for every round.

    Its shapes (``d_Φ``, ``d_F``, classes) and the layer of each round come from the setup it broadcast, never
    from an upload. The *participants* (``clients``) are the ids whose upload was merged in the first round;
    each later round needs exactly one valid upload per participant, and a participant without one is dropped
    for the rest of the run (its statistics would otherwise be mixed with a model it did not contribute to).
    ``excluded`` maps each dropped id -- and each valid id all of whose first-round uploads were rejected -- to
    the reason; ``rejected`` lists ``(round, Rejection)`` for every rejected message (keyed by position, so an
    invalid message claiming a participant's id never drops the participant, as long as that participant's own
    valid upload arrives: identity is not authenticated, the first valid upload per id is kept). A round either
    succeeds or raises ``ValueError`` (no valid upload) leaving every attribute as it was.
    """

    def __init__(self, setup: msg.DeepAFLSetup, dtype: Any = None, psd: str = DEFAULT_PSD, probes: int = PROBES,
                 probe_seed: Any = None) -> None:
        self.setup, self.dtype, self.psd = _check_setup(setup), resolve_dtype(dtype), psd
        self.probes, self._probe_rng = probes, np.random.default_rng(probe_seed)
        self.layer, self.weights, self.omegas = 0, [], []
        self.clients: tuple[int | str, ...] | None = None
        self.excluded: dict[int | str, str] = {}
        self.rejected: list[tuple[int, Rejection]] = []
        self.last_screen: ScreenResult | None = None
        self.comm = CommLog()

    def _screen(self, uploads: Sequence[Any], kind: type, dim: int, psd: str, on_checked: Any = None):
        """Screen one round without touching the server: ``(accepted, rejections, newly excluded, the screen's
        own rejections)``; ``on_checked`` as for :func:`federated.validation.screen`."""
        uploads = list(uploads)
        ok, screened = screen(uploads, kind=kind, dim=dim, classes=self.setup.classes, layer=self.layer, psd=psd,
                              probes=self.probes, probe_seed=self._probe_rng, warn=False, on_checked=on_checked)
        bad = list(screened)
        rejected_at = {r.position for r in bad}
        accepted = []
        for position, upload in zip([i for i in range(len(uploads)) if i not in rejected_at], ok):
            cid = upload.client_id
            if cid in self.excluded or (self.clients is not None and cid not in self.clients):
                why = "was excluded in an earlier round" if cid in self.excluded else "did not take part in round 1"
                claimed = describe_id(uploads[position].client_id)
                bad.append(Rejection(position, claimed, f"message {position} (claimed client_id {claimed}): client "
                                     f"{cid!r} {why}, so its statistics cannot join layer {self.layer}"))
            else:
                accepted.append(upload)
        bad.sort(key=lambda r: r.position)
        merged = {u.client_id for u in accepted}
        if self.clients is None:
            # First round: a valid id that sent only rejected messages is out of the run from now on.
            candidates = []
            for r in bad:
                try:
                    candidates.append((normalize_client_id(uploads[r.position].client_id), r))
                except Exception:  # noqa: BLE001 - an invalid id names nobody and excludes nobody
                    continue
        else:
            candidates = [(cid, r) for cid in self.clients for r in bad if r.client_id == describe_id(cid)]
            candidates += [(cid, None) for cid in self.clients if cid not in merged]
        dropped: dict[int | str, str] = {}
        for cid, r in candidates:
            if cid in merged or cid in self.excluded:
                continue
            reason = r.reason if r is not None else f"client {cid!r}: no valid upload for layer {self.layer}"
            dropped[cid] = reason if cid not in dropped else dropped[cid]
        if not accepted:
            warn_rejections(screened)
            reasons = [r.reason for r in bad] or ["no upload at all"]
            raise ValueError(f"layer {self.layer}: no valid upload; rejected: {reasons}")
        return accepted, bad, dropped, screened

    def _screen_and_merge(self, uploads: Sequence[Any], kind: type, dim: int, gram: str, cross: str):
        """Screen, certify the sum (:func:`federated.afl.screen_and_merge`) and merge one round's uploads."""
        uploads = list(uploads)
        (ok, bad, dropped, screened), stats = screen_and_merge(
            gram_init(dim, self.setup.classes, self.dtype),
            lambda mode, on_checked: self._screen(uploads, kind, dim, mode, on_checked),
            self.psd, gram, cross)
        warn_rejections(screened)
        return ok, bad, dropped, stats

    def _commit(self, accepted: list[Any], bad: list[Rejection], dropped: dict[int | str, str],
                broadcast: Any) -> None:
        """Apply a screened, solved round (the only place the round's screening result changes the server)."""
        self.comm.record_messages(accepted, broadcast, [u.client_id for u in accepted])
        self.rejected.extend((self.comm.rounds, r) for r in bad)
        self.excluded.update(dropped)
        self.clients = tuple(u.client_id for u in accepted)
        self.last_screen = ScreenResult(accepted, bad)

    def classifier_round(self, uploads: Sequence[msg.DeepAFLClassifierUpload]) -> msg.DeepAFLClassifierBroadcast:
        """``Wₜ = (ΣΦₜᵀΦₜ + λI)⁻¹ΣΦₜᵀY`` over the accepted uploads; raises (state unchanged) if none is valid."""
        if len(self.weights) != self.layer or self.layer > self.setup.layers:
            raise ValueError(f"classifier round out of order: layer {self.layer}, {len(self.weights)} classifiers")
        ok, bad, dropped, stats = self._screen_and_merge(uploads, msg.DeepAFLClassifierUpload, self.setup.phi_dim,
                                                         "phi_gram", "phi_target")
        weight = ridge_solve(stats.xtx, stats.xty, self.setup.lam)
        out = msg.DeepAFLClassifierBroadcast(self.layer, np.asarray(weight))
        self._commit(ok, bad, dropped, out)
        self.weights.append(weight)
        return out

    def block_round(self, uploads: Sequence[msg.DeepAFLBlockUpload]) -> msg.DeepAFLBlockBroadcast:
        """``Ωₜ`` from ``ΣFₜᵀFₜ, ΣFₜᵀRₜ``, ``Wₜ`` (:func:`omega_solve`); raises (state unchanged) if none is valid."""
        if len(self.weights) != self.layer + 1 or self.layer >= self.setup.layers:
            raise ValueError(f"block round out of order: layer {self.layer}, {len(self.weights)} classifiers")
        ok, bad, dropped, stats = self._screen_and_merge(uploads, msg.DeepAFLBlockUpload, self.setup.block_dim,
                                                         "block_gram", "block_residual")
        omega = omega_solve(stats.xtx, stats.xty, self.weights[self.layer], self.setup.gamma)
        out = msg.DeepAFLBlockBroadcast(self.layer, np.asarray(omega))
        self._commit(ok, bad, dropped, out)
        self.omegas.append(omega)
        self.layer += 1
        return out

    def model(self, init: str = "torch_linear", layers: Any = None) -> DeepAFLModel:
        if len(self.weights) != self.setup.layers + 1:
            raise ValueError(f"the protocol is at layer {self.layer} of {self.setup.layers}; run all 2T+1 rounds")
        first, blocks = make_layers(self.setup, init, self.dtype, layers)
        return DeepAFLModel(first, blocks, tuple(self.omegas), self.weights[-1])


def _round_trip(message: Any) -> Any:
    return msg.from_arrays(message.to_arrays())


def run_federated(
    clients: Sequence[DeepAFLClient], server: DeepAFLServer,
    transport: Callable[[Any], Any] | None = _round_trip, init: str = "torch_linear", layers: Any = None,
) -> DeepAFLModel:
    """Drive the 2T + 1 rounds. ``transport`` is applied to every upload and broadcast (default: a round trip
    through ``to_arrays``/``from_arrays``, as on a wire); a client the server excluded gets no more broadcasts."""
    send = transport or (lambda m: m)

    def active() -> list[DeepAFLClient]:
        return [c for c in clients if server.clients is None or c.client_id in server.clients]

    for t in range(server.setup.layers + 1):
        weight = send(server.classifier_round([send(c.classifier_upload()) for c in active()]))
        if t == server.setup.layers:
            break
        omega = send(server.block_round([send(c.block_upload(weight)) for c in active()]))
        for c in active():
            c.apply_block(omega)
    return server.model(init, layers)


class DeepAFL:
    """Scikit-learn style DeepAFL. Hyper-parameters default to the authors' settings (module docstring).

    ``fit(x, y)`` trains on pooled data; ``fit_federated([(x₁, y₁), ...])`` runs the message protocol over the
    clients (``excluded_``: dropped client ids and why, ``rejected_``: every rejected message, ``comm_``: bytes).
    Both give the same model for the same ``seed`` and data, whatever the partition.
    """

    def __init__(self, phi_dim: int = 1024, block_dim: int = 1024, layers: int = 20, lam: float = 1.0,
                 gamma: float = 0.05, activation: str = "gelu", input_activation: str = "tanh",
                 init: str = "torch_linear", seed: int = 0, dtype: Any = None, random_layers: Any = None) -> None:
        self.phi_dim, self.block_dim, self.layers, self.lam, self.gamma = phi_dim, block_dim, layers, lam, gamma
        self.activation, self.input_activation, self.init, self.seed, self.dtype = (
            activation, input_activation, init, seed, dtype)
        # Given (input layer, blocks) instead of the seed's draw (make_layers); every client gets the same ones.
        self.random_layers = random_layers

    def setup(self, in_dim: int, classes: int) -> msg.DeepAFLSetup:
        return _check_setup(msg.DeepAFLSetup(int(self.seed), int(in_dim), int(classes), int(self.phi_dim),
                                             int(self.block_dim), int(self.layers), float(self.lam),
                                             float(self.gamma), self.activation, self.input_activation))

    def fit(self, x: Any, y: Any, classes: int | None = None) -> DeepAFL:
        labels = check_labels(y, classes=classes)
        setup = self.setup(np.shape(x)[1] if np.ndim(x) == 2 else -1, classes or int(labels.max()) + 1)
        self.model_ = fit_centralized(x, labels, setup, self.init, self.dtype, self.random_layers)
        self.classes_ = setup.classes
        return self

    def fit_federated(self, client_data: Sequence[tuple[Any, Any]], classes: int | None = None,
                      transport: Callable[[Any], Any] | None = _round_trip) -> DeepAFL:
        if not client_data:
            raise ValueError("client_data is empty")
        if classes is None:
            classes = 1 + max(int(check_labels(y, name=f"client {i} y").max())
                              for i, (_, y) in enumerate(client_data) if np.size(y))
        setup = self.setup(np.shape(client_data[0][0])[1], classes)
        clients = [DeepAFLClient(i, x, y, setup, self.init, self.dtype, self.random_layers)
                   for i, (x, y) in enumerate(client_data)]
        server = DeepAFLServer(setup, self.dtype)
        self.model_ = run_federated(clients, server, transport, self.init, self.random_layers)
        self.classes_, self.excluded_, self.comm_ = classes, dict(server.excluded), server.comm.summary()
        self.rejected_ = list(server.rejected)
        return self

    @property
    def coef_(self) -> jax.Array:
        return self.model_.weight

    def decision_function(self, x: Any) -> jax.Array:
        if not hasattr(self, "model_"):
            raise ValueError("DeepAFL is not fitted; call fit or fit_federated first")
        x = check_features(x, dim=self.model_.input_layer.in_dim)
        return forward(self.model_, x.astype(self.model_.weight.dtype))

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray(jnp.argmax(self.decision_function(x), axis=1))

    def score(self, x: Any, y: Any) -> float:
        labels = check_labels(y, n=np.shape(x)[0])
        return float(np.mean(self.predict(x) == labels))
