"""A federated server no client can take over: adversarial uploads against AFL and both DeepAFL rounds.

Every case inserts bad message(s) into the honest clients' uploads (first, middle or last) and requires the
server's result to equal -- bit for bit, ``np.array_equal`` -- the result of the same server given only the honest
uploads in the same order, with each bad message named in the rejection record (its position and claimed id).
The cases are generated: a list of mutation functions (whole-message junk, forged ids, counts, gamma, layer,
Gram and cross-moment defects, hijack attempts with a self-consistent but wrong shape) crossed with the three
positions and with two claimed ids -- a fresh one and an honest client's own id (1, so ``True`` and ``1.0``
alias it) -- plus hypothesis-drawn batches of several bad messages at random positions. The number of generated
cases is asserted, so a silently shrinking list fails.

AFL: Zhuang et al. 2024, "Analytic Federated Learning" (the sum form of the absolute aggregation law); DeepAFL:
Tang et al. 2026 (per-layer sums of ``ΦᵀΦ, ΦᵀY`` and ``FᵀF, FᵀR``).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federated import afl, deepafl
from federated import messages as msg
from federated.validation import MAX_COUNT, RejectedUploadWarning, describe_id, screen

D, C, GAMMA = 5, 3, 1.0
HONEST_IDS = (0, 1, 2, 3)
ALIAS = 1  # an honest client's id: True == 1.0 == 1 would alias it in a dict
FRESH = 99
POSITIONS = {"first": 0, "middle": 2, "last": len(HONEST_IDS)}
FIELDS = {msg.AFLUpload: ("xtx", "xty"), msg.DeepAFLClassifierUpload: ("phi_gram", "phi_target"),
          msg.DeepAFLBlockUpload: ("block_gram", "block_residual")}


# --------------------------------------------------------------------------------------------- hostile objects
class Hostile:
    """An id that cannot be hashed, compared or printed."""

    def __hash__(self) -> int:
        raise RuntimeError("no hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class EqualsEverything(int):
    """An int subclass equal to every id: a set/dict lookup would alias any client."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = int.__hash__


class RaisingAttributes:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no attribute {name}")


class RaisingArray:
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("cannot be read")


# ---------------------------------------------------------------------------------------------------- mutations
def _gram(u: Any) -> np.ndarray:
    return getattr(u, FIELDS[type(u)][0])


def _cross(u: Any) -> np.ndarray:
    return getattr(u, FIELDS[type(u)][1])


_KEEP = object()


def _set(u: Any, gram: Any = _KEEP, cross: Any = _KEEP, **fields: Any) -> Any:
    g, r = FIELDS[type(u)]
    if gram is not _KEEP:
        fields[g] = gram
    if cross is not _KEEP:
        fields[r] = cross
    return dataclasses.replace(u, **fields)


def _edited(u: Any, edit: Callable[[np.ndarray], None], which: str = "gram") -> Any:
    a = (_gram(u) if which == "gram" else _cross(u)).copy()
    edit(a)
    return _set(u, **{which: a})


def _not_psd(u: Any) -> Any:
    lam, vec = np.linalg.eigh(_gram(u))
    lam[0] = -0.05 * abs(lam).sum() - 1.0
    return _set(u, gram=(vec * lam) @ vec.T)


def _other_type(u: Any) -> Any:
    if type(u) is msg.AFLUpload:
        return msg.DeepAFLClassifierUpload(u.client_id, 0, u.xtx, u.xty, u.count)
    return msg.AFLUpload(u.client_id, _gram(u), _cross(u), u.count, 1.0)


def _subclass(u: Any) -> Any:
    sub = dataclasses.make_dataclass("Sub" + type(u).__name__, [], bases=(type(u),), frozen=True)
    return sub(**{f.name: getattr(u, f.name) for f in dataclasses.fields(u)})


def _hijack_shape(u: Any, d: int) -> Any:
    # A self-consistent, valid-looking upload of the wrong dimension: on the old server, placed first, it set
    # the dimension every honest client was then rejected against.
    return _set(u, gram=np.eye(d) * float(np.trace(_gram(u))), cross=np.ones((d, C)))


# name -> (mutation of an honest upload that already claims the case's id, applies to, keeps the claimed id)
MUTATIONS: dict[str, tuple[Callable[[Any], Any], str, bool]] = {
    # whole message
    "none": (lambda u: None, "all", False),
    "object": (lambda u: object(), "all", False),
    "int": (lambda u: 7, "all", False),
    "str": (lambda u: "afl_upload", "all", False),
    "transport_dict": (lambda u: u.to_arrays(), "all", False),
    "raising_attributes": (lambda u: RaisingAttributes(), "all", False),
    "other_message_type": (_other_type, "all", True),
    "subclass": (_subclass, "all", True),
    # forged ids
    "id_true": (lambda u: _set(u, client_id=True), "all", False),
    "id_np_true": (lambda u: _set(u, client_id=np.bool_(True)), "all", False),
    "id_float": (lambda u: _set(u, client_id=1.0), "all", False),
    "id_nan": (lambda u: _set(u, client_id=float("nan")), "all", False),
    "id_complex": (lambda u: _set(u, client_id=1 + 0j), "all", False),
    "id_list": (lambda u: _set(u, client_id=[9]), "all", False),
    "id_0d_array": (lambda u: _set(u, client_id=np.array(9)), "all", False),
    "id_1d_array": (lambda u: _set(u, client_id=np.array([1])), "all", False),
    "id_tuple": (lambda u: _set(u, client_id=(1,)), "all", False),
    "id_bytes": (lambda u: _set(u, client_id=b"1"), "all", False),
    "id_none": (lambda u: _set(u, client_id=None), "all", False),
    "id_beyond_int64": (lambda u: _set(u, client_id=2**70), "all", False),
    "id_huge_int": (lambda u: _set(u, client_id=10**5000), "all", False),
    "id_hostile": (lambda u: _set(u, client_id=Hostile()), "all", False),
    "id_equals_everything": (lambda u: _set(u, client_id=EqualsEverything(1)), "all", False),
    # counts
    "count_negative": (lambda u: _set(u, count=-1), "all", True),
    "count_2_70": (lambda u: _set(u, count=2**70), "all", True),
    "count_above_limit": (lambda u: _set(u, count=MAX_COUNT + 1), "all", True),
    "count_float": (lambda u: _set(u, count=1.5), "all", True),
    "count_integral_float": (lambda u: _set(u, count=float(u.count)), "all", True),
    "count_bool": (lambda u: _set(u, count=True), "all", True),
    "count_str": (lambda u: _set(u, count="10"), "all", True),
    "count_none": (lambda u: _set(u, count=None), "all", True),
    "count_array": (lambda u: _set(u, count=np.array([u.count])), "all", True),
    "count_zero_nonzero_stats": (lambda u: _set(u, count=0), "all", True),
    # gamma (AFL)
    "gamma_nan": (lambda u: _set(u, gamma=float("nan")), "afl", True),
    "gamma_inf": (lambda u: _set(u, gamma=float("inf")), "afl", True),
    "gamma_negative": (lambda u: _set(u, gamma=-1.0), "afl", True),
    "gamma_str": (lambda u: _set(u, gamma="1"), "afl", True),
    "gamma_none": (lambda u: _set(u, gamma=None), "afl", True),
    "gamma_bool": (lambda u: _set(u, gamma=True), "afl", True),
    "gamma_complex": (lambda u: _set(u, gamma=1j), "afl", True),
    "gamma_huge_int": (lambda u: _set(u, gamma=10**400), "afl", True),
    "gamma_array": (lambda u: _set(u, gamma=np.ones(2)), "afl", True),
    # layer (DeepAFL)
    "layer_next": (lambda u: _set(u, layer=u.layer + 1), "deep", True),
    "layer_negative": (lambda u: _set(u, layer=-1), "deep", True),
    "layer_bool": (lambda u: _set(u, layer=False), "deep", True),
    "layer_str": (lambda u: _set(u, layer="0"), "deep", True),
    "layer_float": (lambda u: _set(u, layer=float(u.layer)), "deep", True),
    # Gram
    "hijack_bigger_shape": (lambda u: _hijack_shape(u, _gram(u).shape[0] + 2), "all", True),
    "hijack_smaller_shape": (lambda u: _hijack_shape(u, _gram(u).shape[0] - 1), "all", True),
    "gram_rectangular": (lambda u: _set(u, gram=np.zeros((_gram(u).shape[0], _gram(u).shape[0] + 1))), "all",
                         True),
    "gram_1d": (lambda u: _set(u, gram=np.diagonal(_gram(u)).copy()), "all", True),
    "gram_3d": (lambda u: _set(u, gram=_gram(u)[None]), "all", True),
    "gram_empty": (lambda u: _set(u, gram=np.zeros((0, 0)), cross=np.zeros((0, C))), "all", True),
    "gram_scalar": (lambda u: _set(u, gram=np.float64(1.0)), "all", True),
    "gram_int64": (lambda u: _set(u, gram=_gram(u).astype(np.int64)), "all", True),
    "gram_float16": (lambda u: _set(u, gram=_gram(u).astype(np.float16)), "all", True),
    "gram_complex": (lambda u: _set(u, gram=_gram(u).astype(np.complex128)), "all", True),
    "gram_bool": (lambda u: _set(u, gram=_gram(u) > 0), "all", True),
    "gram_object": (lambda u: _set(u, gram=_gram(u).astype(object)), "all", True),
    "gram_str_array": (lambda u: _set(u, gram=_gram(u).astype(str)), "all", True),
    "gram_string": (lambda u: _set(u, gram="xtx"), "all", True),
    "gram_list": (lambda u: _set(u, gram=_gram(u).tolist()), "all", True),
    "gram_nested_wrong": (lambda u: _set(u, gram=[[None] * 3, "ab"]), "all", True),
    "gram_none": (lambda u: _set(u, gram=None), "all", True),
    "gram_unreadable": (lambda u: _set(u, gram=RaisingArray()), "all", True),
    "gram_nan": (lambda u: _edited(u, lambda a: a.__setitem__((1, 2), np.nan)), "all", True),
    "gram_inf": (lambda u: _edited(u, lambda a: a.__setitem__((0, 0), np.inf)), "all", True),
    "gram_huge_finite": (lambda u: _set(u, gram=_gram(u) * 1e300 / max(np.abs(_gram(u)).max(), 1e-300)), "all",
                         True),
    "gram_asymmetric": (lambda u: _edited(u, lambda a: a.__setitem__((0, 1), a[0, 1] + np.abs(a).max())), "all",
                        True),
    "gram_negative_diagonal": (lambda u: _edited(u, lambda a: a.__setitem__((0, 0), -1.0)), "all", True),
    "gram_not_psd": (_not_psd, "all", True),
    # cross-moment
    "cross_wrong_rows": (lambda u: _set(u, cross=np.zeros((_gram(u).shape[0] + 1, C))), "all", True),
    "cross_one_class_more": (lambda u: _set(u, cross=np.ones((_gram(u).shape[0], C + 1))), "all", True),
    "hijack_huge_class_count": (lambda u: _set(u, cross=np.ones((_gram(u).shape[0], 1000))), "all", True),
    "cross_1d": (lambda u: _set(u, cross=_cross(u)[:, 0].copy()), "all", True),
    "cross_object": (lambda u: _set(u, cross=_cross(u).astype(object)), "all", True),
    "cross_int": (lambda u: _set(u, cross=_cross(u).astype(np.int32)), "all", True),
    "cross_string": (lambda u: _set(u, cross="xty"), "all", True),
    "cross_nan": (lambda u: _edited(u, lambda a: a.__setitem__((0, 0), np.nan), "cross"), "all", True),
}


def _applies(where: str, kind: type) -> bool:
    return where == "all" or (where == "afl") == (kind is msg.AFLUpload)


def cases(kind: type) -> list[tuple[str, str, int]]:
    """``(mutation, position name, claimed id)`` for one upload type: every mutation x 3 positions x (fresh id,
    honest id) -- or one id when the mutation replaces the id or the whole message."""
    out = []
    for name, (_, where, keeps_id) in MUTATIONS.items():
        if _applies(where, kind):
            for pos in POSITIONS:
                out += [(name, pos, cid) for cid in ((FRESH, ALIAS) if keeps_id else (FRESH,))]
    return out


def bad_message(name: str, template: Any, claimed: int) -> Any:
    return MUTATIONS[name][0](dataclasses.replace(template, client_id=claimed))


def _claimed(message: Any) -> str:
    try:
        return describe_id(message.client_id)
    except Exception:  # noqa: BLE001 - the same rule as the server's record
        return "<none>"


def _inserted(honest: list[Any], bad: Any, position: int) -> list[Any]:
    return honest[:position] + [bad] + honest[position:]


def _quiet(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[warnings.WarningMessage]]:
    """``call(*args, **kwargs)`` and the rejection warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call(*args, **kwargs)
    return out, [w for w in caught if issubclass(w.category, RejectedUploadWarning)]


def _assert_named(excluded: list[Any], bad: list[tuple[int, Any]]) -> None:
    """One rejection per bad message, at its position, naming the id it claimed."""
    assert [(r.position, r.client_id) for r in excluded] == [(p, _claimed(m)) for p, m in bad]
    for r in excluded:
        assert r.reason.startswith(f"message {r.position} (claimed client_id {r.client_id})"), r.reason


# --------------------------------------------------------------------------------------------------------- AFL
@pytest.fixture(scope="module")
def afl_world():
    rng = np.random.default_rng(0)
    honest = []
    for cid in HONEST_IDS:
        x = rng.standard_normal((40, D))
        honest.append(afl.client_stats(x, rng.integers(0, C, 40), GAMMA, C, client_id=cid))
    reference = afl.aggregate(honest, dim=D, classes=C)
    wave1 = afl.aggregate(honest[:2], dim=D, classes=C).state
    wave2 = afl.server_update(wave1, honest[2:])[0]
    return honest, reference, wave1, wave2


def _same_afl_state(a: afl.AFLServerState, b: afl.AFLServerState) -> bool:
    return (np.array_equal(np.asarray(a.stats.xtx), np.asarray(b.stats.xtx))
            and np.array_equal(np.asarray(a.stats.xty), np.asarray(b.stats.xty))
            and int(a.stats.count) == int(b.stats.count) and a.gamma_sum == b.gamma_sum
            and a.clients == b.clients and all(type(c) is int for c in a.clients)
            and a.count == b.count and a.declared_classes == b.declared_classes)


AFL_CASES = cases(msg.AFLUpload)


def test_case_counts():
    deep = cases(msg.DeepAFLClassifierUpload)
    print(f"\ngenerated cases: AFL {len(AFL_CASES)} per server path (aggregate, server_update, pairwise), "
          f"DeepAFL {len(deep)} per round (classifier, block); mutations {len(MUTATIONS)}")
    assert (len(MUTATIONS), len(AFL_CASES), len(deep)) == (79, 381, 357)


def test_afl_aggregate_equals_the_honest_run_bit_for_bit_whatever_one_bad_message(afl_world):
    honest, reference, *_ = afl_world
    failures = []
    for name, pos, claimed in AFL_CASES:
        bad = bad_message(name, honest[1], claimed)
        p = POSITIONS[pos]
        try:
            result, warned = _quiet(afl.aggregate, _inserted(honest, bad, p), dim=D, classes=C)
            assert np.array_equal(np.asarray(result.weight), np.asarray(reference.weight))
            assert _same_afl_state(result.state, reference.state)
            _assert_named(result.excluded, [(p, bad)])
            assert len(warned) == 1
        except Exception as err:  # noqa: BLE001 - collect every failing case, then report them all
            failures.append(f"{name}@{pos} id={claimed}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_afl_server_update_in_a_later_wave_equals_the_honest_waves(afl_world):
    honest, _, wave1, wave2 = afl_world
    failures = []
    for name, pos, claimed in AFL_CASES:
        bad = bad_message(name, honest[1], claimed)
        # In wave 2 the honest id 1 is already merged: a copy claiming it must be refused, not merged twice.
        p = min(POSITIONS[pos], 2)
        try:
            (state, excluded), warned = _quiet(afl.server_update, wave1, _inserted(honest[2:], bad, p))
            assert _same_afl_state(state, wave2)
            _assert_named(excluded, [(p, bad)])
        except Exception as err:  # noqa: BLE001
            failures.append(f"{name}@{pos} id={claimed}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


def test_afl_pairwise_law_rejects_the_same_messages(afl_world):
    honest, *_ = afl_world
    want = afl.aggregate_pairwise(honest, dim=D, classes=C)
    failures = []
    for name, pos, claimed in AFL_CASES:
        bad = bad_message(name, honest[1], claimed)
        p = POSITIONS[pos]
        try:
            got, _ = _quiet(afl.aggregate_pairwise, _inserted(honest, bad, p), dim=D, classes=C)
            assert np.array_equal(np.asarray(got.weight), np.asarray(want.weight))
            _assert_named(got.excluded, [(p, bad)])
        except Exception as err:  # noqa: BLE001
            failures.append(f"{name}@{pos} id={claimed}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_afl_many_bad_messages_at_random_positions(afl_world, data):
    honest, reference, *_ = afl_world
    picks = data.draw(st.lists(st.sampled_from(AFL_CASES), min_size=1, max_size=8))
    sent = list(honest)
    for name, _, claimed in picks:
        bad = bad_message(name, honest[data.draw(st.integers(0, len(honest) - 1))], claimed)
        sent.insert(data.draw(st.integers(0, len(sent))), bad)
    bad_at = [(i, m) for i, m in enumerate(sent) if not any(m is h for h in honest)]
    result, _ = _quiet(lambda: afl.aggregate(sent, dim=D, classes=C))
    assert np.array_equal(np.asarray(result.weight), np.asarray(reference.weight))
    assert _same_afl_state(result.state, reference.state)
    _assert_named(result.excluded, bad_at)


def test_hijack_attempts_placed_first_are_rejected_and_named(afl_world):
    honest, reference, *_ = afl_world
    hijacks = {
        "mis-shaped": _hijack_shape(dataclasses.replace(honest[0], client_id=FRESH), D + 3),
        "wrong dtype": _set(dataclasses.replace(honest[0], client_id=FRESH), gram=honest[0].xtx.astype(np.float16)),
        "huge class count": _set(dataclasses.replace(honest[0], client_id=FRESH), cross=np.ones((D, 4096))),
    }
    for what, bad in hijacks.items():
        result, _ = _quiet(afl.aggregate, [bad, *honest], dim=D, classes=C)
        assert np.array_equal(np.asarray(result.weight), np.asarray(reference.weight)), what
        assert result.state.clients == HONEST_IDS and result.state.stats.classes == C, what
        assert [r.position for r in result.excluded] == [0] and "99" in result.excluded[0].reason, what
    # A server pinned to float32 transport refuses a float64 upload sent first, and keeps the float32 ones.
    f32 = [dataclasses.replace(u, xtx=u.xtx.astype(np.float32), xty=u.xty.astype(np.float32)) for u in honest]
    want = afl.aggregate(f32, dim=D, classes=C, transport_dtype=np.float32)
    got, _ = _quiet(lambda: afl.aggregate([dataclasses.replace(honest[0], client_id=FRESH), *f32], dim=D,
                                          classes=C, transport_dtype=np.float32))
    assert np.array_equal(np.asarray(got.weight), np.asarray(want.weight))
    assert "float32" in got.excluded[0].reason


def test_the_server_shape_is_never_taken_from_an_upload(afl_world):
    honest, reference, wave1, _ = afl_world
    with pytest.raises(ValueError, match="dim="):
        afl.aggregate(honest)
    with pytest.raises(ValueError, match="dim="):
        afl.aggregate_pairwise(honest)
    with pytest.raises(ValueError, match="dim=7"):
        afl.aggregate(honest, dim=7, state=wave1)
    with pytest.raises(ValueError, match="classes=4"):
        afl.aggregate(honest, classes=4, state=wave1)
    with pytest.raises(ValueError, match="dim must be"):
        afl.server_init(0, C)
    # Without declared classes the width is the widest accepted upload; declared, it is fixed.
    assert afl.aggregate(honest, dim=D).state.stats.classes == C
    assert afl.aggregate(honest[:1], dim=D, classes=C + 2).state.stats.classes == C + 2


def test_duplicate_ids_keep_the_first_valid_upload(afl_world):
    honest, reference, *_ = afl_world
    other = afl.client_stats(np.random.default_rng(5).standard_normal((30, D)), np.arange(30) % C, GAMMA, C,
                             client_id=ALIAS)
    # Honest first, a different valid-looking upload claiming the same id second: refused, honest result.
    late, _ = _quiet(lambda: afl.aggregate([*honest, other], dim=D, classes=C))
    assert np.array_equal(np.asarray(late.weight), np.asarray(reference.weight))
    assert [(r.position, r.client_id) for r in late.excluded] == [(4, "1")]
    assert "second upload" in late.excluded[0].reason
    # Identity is not authenticated: the same forgery sent *first* is the first valid upload for id 1 and is kept
    # (the honest one is then the duplicate). What no *invalid* message can do is displace the honest one: that is
    # what every case of the generated tests with claimed id 1 checks.
    early, _ = _quiet(lambda: afl.aggregate([other, *honest], dim=D, classes=C))
    assert [(r.position, r.client_id) for r in early.excluded] == [(2, "1")]
    assert not np.array_equal(np.asarray(early.weight), np.asarray(reference.weight))


def test_numpy_integer_ids_are_normalized_and_huge_valid_counts_are_exact(afl_world):
    honest, reference, *_ = afl_world
    as_numpy = [dataclasses.replace(u, client_id=np.int64(u.client_id)) for u in honest]
    result = afl.aggregate(as_numpy, dim=D, classes=C)
    assert np.array_equal(np.asarray(result.weight), np.asarray(reference.weight))
    assert result.state.clients == HONEST_IDS and all(type(c) is int for c in result.state.clients)
    # A count of 2**40 (or up to 2**62) is valid and summed exactly; the core's int32 counter saturates.
    big = [dataclasses.replace(honest[0], count=2**40), dataclasses.replace(honest[1], count=MAX_COUNT)]
    state = afl.aggregate(big + honest[2:], dim=D, classes=C).state
    assert state.count == 2**40 + MAX_COUNT + sum(u.count for u in honest[2:])
    assert int(state.stats.count) == np.iinfo(np.int32).max


def test_a_round_with_only_bad_messages_leaves_the_state_unchanged(afl_world):
    honest, _, wave1, _ = afl_world
    bad = [bad_message(name, honest[2], FRESH) for name in ("none", "gram_nan", "id_true", "count_2_70")]
    (state, excluded), _ = _quiet(lambda: afl.server_update(wave1, bad))
    assert state is wave1 and [r.position for r in excluded] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no client statistics"):
        _quiet(lambda: afl.aggregate(bad, dim=D, classes=C))


def test_screen_raises_only_for_the_servers_own_settings(afl_world):
    honest, *_ = afl_world
    with pytest.raises(ValueError, match="dim"):
        screen(honest, kind=msg.AFLUpload, dim=-1)
    with pytest.raises(TypeError, match="kind"):
        screen(honest, kind=dict, dim=D)


# ------------------------------------------------------------------------------------------ AFL argument checks
def test_client_stats_and_remove_regularization_refuse_bad_arguments_by_name():
    x = np.random.default_rng(1).standard_normal((12, D))
    y = np.arange(12) % C
    with pytest.raises(ValueError, match=r"y has 3 labels but x has 0 rows"):
        afl.client_stats(np.zeros((0, D)), [0, 1, 2], GAMMA, C)
    with pytest.raises(ValueError, match="labels but x has"):
        afl.client_stats(x, y[:5], GAMMA, C)
    assert afl.client_stats(np.zeros((0, D)), [], GAMMA, C).count == 0  # an empty client stays allowed
    for dtype, value in ((np.float64, 1e200), (np.float32, 1e30)):
        big = x.copy()
        big[3, 1] = value
        with pytest.raises(ValueError, match=r"client 0 x: .*overflow"):
            afl.client_stats(big, y, GAMMA, C, dtype=dtype)
    gram = x.T @ x + 2.0 * np.eye(D)
    w = np.linalg.solve(gram, x.T @ np.eye(C)[y])
    for kwargs, name in (({"gamma_total": -1.0}, "gamma_total"), ({"gamma_total": np.nan}, "gamma_total"),
                         ({"gamma_total": 2.0, "global_gamma": -0.5}, "global_gamma"),
                         ({"gamma_total": 2.0, "global_gamma": np.inf}, "global_gamma"),
                         ({"gamma_total": "2"}, "gamma_total")):
        with pytest.raises(ValueError, match=name):
            afl.remove_regularization(w, gram, **kwargs)
    np.testing.assert_allclose(np.asarray(afl.remove_regularization(w, gram, 2.0)),
                               np.linalg.lstsq(x, np.eye(C)[y], rcond=None)[0], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------------- DeepAFL
SETUP = msg.DeepAFLSetup(3, D, C, 8, 6, 2, 1.0, 0.05, "gelu", "tanh")


def _deep_clients() -> list[deepafl.DeepAFLClient]:
    rng = np.random.default_rng(2)
    return [deepafl.DeepAFLClient(cid, rng.standard_normal((16, D)), rng.integers(0, C, 16), SETUP)
            for cid in HONEST_IDS]


@pytest.fixture(scope="module")
def deep_world():
    clients = _deep_clients()
    classifier = [c.classifier_upload() for c in clients]
    server = deepafl.DeepAFLServer(SETUP)
    weight = server.classifier_round(classifier)
    block = [c.block_upload(weight) for c in clients]
    after_classifier = _snapshot(deepafl.DeepAFLServer(SETUP), classifier)
    omega = server.block_round(block)
    return classifier, block, weight, omega, after_classifier, _state(server)


def _snapshot(server: deepafl.DeepAFLServer, classifier: list[Any]) -> deepafl.DeepAFLServer:
    server.classifier_round(classifier)
    return server


def _state(server: deepafl.DeepAFLServer) -> dict[str, Any]:
    """Everything a round may change, as plain values (arrays copied) for exact comparison."""
    return {"layer": server.layer, "clients": server.clients, "excluded": dict(server.excluded),
            "rejected": list(server.rejected), "last_screen": server.last_screen,
            "weights": [np.asarray(w).copy() for w in server.weights],
            "omegas": [np.asarray(o).copy() for o in server.omegas],
            "comm": (server.comm.rounds, dict(server.comm.up), dict(server.comm.down))}


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same model and participants (the rejection records differ: they name the bad messages)."""
    return (a["layer"] == b["layer"] and a["clients"] == b["clients"] and a["comm"] == b["comm"]
            and len(a["weights"]) == len(b["weights"]) and len(a["omegas"]) == len(b["omegas"])
            and all(np.array_equal(x, y) for x, y in zip(a["weights"], b["weights"]))
            and all(np.array_equal(x, y) for x, y in zip(a["omegas"], b["omegas"])))


DEEP_CASES = cases(msg.DeepAFLClassifierUpload)


def _after_classifier(classifier: list[Any]) -> deepafl.DeepAFLServer:
    return _snapshot(deepafl.DeepAFLServer(SETUP), classifier)


@pytest.mark.parametrize("round_kind", ["classifier", "block"])
def test_deepafl_rounds_equal_the_honest_run_bit_for_bit_whatever_one_bad_message(deep_world, round_kind):
    classifier, block, weight, omega, after_classifier, final = deep_world
    honest = classifier if round_kind == "classifier" else block
    failures = []
    for name, pos, claimed in DEEP_CASES:
        bad = bad_message(name, honest[1], claimed)
        p = POSITIONS[pos]
        try:
            if round_kind == "classifier":
                server = deepafl.DeepAFLServer(SETUP)
                out, _ = _quiet(server.classifier_round, _inserted(honest, bad, p))
                assert np.array_equal(out.weight, weight.weight) and out.layer == 0
                want = _state(after_classifier)
            else:
                server = _after_classifier(classifier)
                out, _ = _quiet(server.block_round, _inserted(honest, bad, p))
                assert np.array_equal(out.omega, omega.omega) and out.layer == 0
                want = final
            got = _state(server)
            assert _same_model(got, want)
            assert ALIAS not in server.excluded and server.clients == HONEST_IDS
            _assert_named(server.last_screen.excluded, [(p, bad)])
        except Exception as err:  # noqa: BLE001 - collect every failing case, then report them all
            failures.append(f"{name}@{pos} id={claimed}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_deepafl_many_bad_messages_at_random_positions(deep_world, data):
    classifier, block, weight, omega, _, final = deep_world
    server = deepafl.DeepAFLServer(SETUP)
    for honest, call, want in ((classifier, server.classifier_round, weight.weight),
                               (block, server.block_round, omega.omega)):
        sent = list(honest)
        for name, _, claimed in data.draw(st.lists(st.sampled_from(DEEP_CASES), min_size=1, max_size=6)):
            sent.insert(data.draw(st.integers(0, len(sent))), bad_message(name, honest[1], claimed))
        out, _ = _quiet(call, sent)
        assert np.array_equal(next(a for a in vars(out).values() if isinstance(a, np.ndarray)), want)
        assert server.clients == HONEST_IDS
    assert _same_model(_state(server), final)


def test_deepafl_duplicates_and_aliases_never_drop_the_honest_client(deep_world):
    classifier, block, weight, omega, _, final = deep_world
    server = deepafl.DeepAFLServer(SETUP)
    forged = [dataclasses.replace(classifier[1], client_id=True), dataclasses.replace(classifier[1], client_id=1.0),
              bad_message("gram_nan", classifier[1], ALIAS), classifier[1]]
    # The invalid aliases come first, the honest upload, then a valid duplicate of it.
    out, warned = _quiet(lambda: server.classifier_round([*forged[:3], *classifier, forged[3]]))
    assert np.array_equal(out.weight, weight.weight) and len(warned) == 4
    assert server.clients == HONEST_IDS and server.excluded == {}
    assert [(r.position, r.client_id) for r in server.last_screen.excluded] == [
        (0, "True"), (1, "1.0"), (2, "1"), (7, "1")]
    assert "second upload" in server.last_screen.excluded[-1].reason
    # A message claiming an id that did not take part in the first round cannot join later.
    stranger = dataclasses.replace(block[2], client_id=FRESH)
    out, _ = _quiet(lambda: server.block_round([*block, stranger]))
    assert np.array_equal(out.omega, omega.omega) and _same_model(_state(server), final)
    assert "did not take part" in server.last_screen.excluded[0].reason


def test_deepafl_a_participant_without_a_valid_upload_is_dropped_and_a_failed_round_changes_nothing(deep_world):
    classifier, block, *_ = deep_world
    server = _after_classifier(classifier)
    before = _state(server)
    junk = [None, bad_message("gram_nan", block[0], 0), bad_message("id_true", block[1], 1), object()]
    for uploads in (junk, []):
        with pytest.raises(ValueError, match="no valid upload"):
            _quiet(server.block_round, uploads)
        after = _state(server)
        assert _same_model(after, before)
        assert after["excluded"] == before["excluded"] and after["rejected"] == before["rejected"]
        assert after["last_screen"] is before["last_screen"]
    # The classifier round out of order (the block round has not succeeded) is refused, also without change.
    with pytest.raises(ValueError, match="out of order"):
        server.classifier_round(classifier)
    assert _same_model(_state(server), before)
    # The next good round equals a never-failed run, bit for bit.
    clean = _after_classifier(classifier)
    a, b = server.block_round(block), clean.block_round(block)
    assert np.array_equal(a.omega, b.omega) and _same_model(_state(server), _state(clean))
    # Client 2 sends only a bad upload in the next classifier round: it is dropped, the others go on.
    clients = _deep_clients()
    run = deepafl.DeepAFLServer(SETUP)
    w = run.classifier_round([c.classifier_upload() for c in clients])
    o = run.block_round([c.block_upload(w) for c in clients])
    for c in clients:
        c.apply_block(o)
    ups = [c.classifier_upload() for c in clients]
    ups[2] = bad_message("gram_inf", ups[2], 2)
    _quiet(lambda: run.classifier_round(ups))
    assert run.clients == (0, 1, 3) and list(run.excluded) == [2] and "NaN/inf" in run.excluded[2]


# ---------------------------------------------------------------------------------------------- transport decoding
def _record_cases(upload: msg.AFLUpload) -> dict[str, dict[str, Any]]:
    wire = upload.to_arrays()
    return {
        "missing field": {k: v for k, v in wire.items() if k != "xty"},
        "extra field": {**wire, "backdoor": np.zeros(3)},
        "wrong kind": {**wire, "kind": "deepafl_block_upload"},
        "kind not a string": {**wire, "kind": 7},
        "object array": {**wire, "xtx": wire["xtx"].astype(object)},
        "string array": {**wire, "xtx": wire["xtx"].astype(str)},
        "complex array": {**wire, "xtx": wire["xtx"].astype(complex)},
        "list for an array": {**wire, "xtx": wire["xtx"].tolist()},
        "string for an array": {**wire, "xty": "xty"},
        "bool id": {**wire, "client_id": True},
        "float id": {**wire, "client_id": 1.0},
        "array id": {**wire, "client_id": np.array([1])},
        "float count": {**wire, "count": 3.0},
        "string gamma": {**wire, "gamma": "1"},
        "bool gamma": {**wire, "gamma": False},
        "object scalar": {**wire, "count": np.array(object())},
    }


def test_from_arrays_is_strict(afl_world):
    honest, *_ = afl_world
    for what, wire in _record_cases(honest[0]).items():
        with pytest.raises((TypeError, ValueError)):
            msg.from_arrays(wire)
            pytest.fail(what)
    back = msg.from_arrays({k: np.asarray(v) for k, v in honest[0].to_arrays().items()})  # np.savez-style scalars
    assert back.client_id == 0 and type(back.client_id) is int and type(back.gamma) is float


def test_flower_decoding_refuses_malformed_records_and_run_round_never_raises(afl_world, monkeypatch):
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    from federated.flower import records, rounds

    honest, *_ = afl_world
    good = records.to_record(honest[0], transport_dtype=None)
    assert records.from_record(good, msg.AFLUpload).client_id == 0
    malformed = {
        "no record": RecordDict(),
        "scalars only": RecordDict({"afl_upload.scalars": good["afl_upload.scalars"]}),
        "extra array": RecordDict({"afl_upload": ArrayRecord(array_dict={
            **{k: v for k, v in good["afl_upload"].items()}, "extra": Array(np.zeros(2))}),
            "afl_upload.scalars": good["afl_upload.scalars"]}),
        "array and scalar clash": RecordDict({"afl_upload": good["afl_upload"], "afl_upload.scalars": ConfigRecord(
            {**dict(good["afl_upload.scalars"]), "xtx": 1.0})}),
        "bool id": RecordDict({"afl_upload": good["afl_upload"], "afl_upload.scalars": ConfigRecord(
            {**dict(good["afl_upload.scalars"]), "client_id": True})}),
        "list count": RecordDict({"afl_upload": good["afl_upload"], "afl_upload.scalars": ConfigRecord(
            {**dict(good["afl_upload.scalars"]), "count": [1, 2]})}),
        "int array for xtx": RecordDict({"afl_upload": ArrayRecord(array_dict={
            "xtx": Array(np.ones((D, D), np.int64)), "xty": good["afl_upload"]["xty"]}),
            "afl_upload.scalars": good["afl_upload.scalars"]}),
        "wrong kind tag": RecordDict({"afl_upload": good["afl_upload"], "afl_upload.scalars": ConfigRecord(
            {**dict(good["afl_upload.scalars"]), "kind": "afl_broadcast"})}),
    }
    decoded_ok = {}
    for what, record in malformed.items():
        try:
            decoded_ok[what] = records.from_record(record, msg.AFLUpload)
        except (TypeError, ValueError):
            continue
    # An integer Gram decodes (the transport is numeric) and is then refused by the server's screening.
    assert list(decoded_ok) == ["int array for xtx"]
    screened, _ = _quiet(screen, list(decoded_ok.values()), kind=msg.AFLUpload, dim=D)
    assert "dtype int64" in screened.excluded[0].reason

    class Reply:
        def __init__(self, node: int, content: Any) -> None:
            self.metadata = type("Meta", (), {"src_node_id": node})()
            self.content = content

        def has_error(self) -> bool:
            return False

    class Grid:
        def send_and_receive(self, outgoing: Any, timeout: float) -> list[Reply]:
            return [Reply(1, good), *(Reply(10 + i, r) for i, r in enumerate(malformed.values())), Reply(99, None)]

    def explode(rd: Any) -> Any:
        if rd is None:
            raise RuntimeError("a decoder bug must not take the server down")
        return records.from_record(rd, msg.AFLUpload)

    # Outgoing Flower messages need a running Flower task; the fake grid never reads them.
    monkeypatch.setattr(rounds, "Message", lambda *args, **kwargs: None)
    outcome = rounds.run_round(Grid(), [1], "train.afl", RecordDict(), explode, "g", 1.0)
    assert sorted(outcome.decoded) == [1, 16] and 99 in outcome.failed and "RuntimeError" in outcome.failed[99]
    assert len(outcome.failed) == len(malformed)


def test_flower_round_log_names_rejected_replies_by_node_and_forwards_only_merged_nodes(afl_world):
    pytest.importorskip("flwr")
    from federated.flower import server_app
    from federated.flower.rounds import RoundOutcome

    honest, *_ = afl_world
    # Node 11 forges client 1's id with a NaN Gram and answers first; node 12 is the real client 1.
    forged = bad_message("gram_nan", honest[1], ALIAS)
    outcome = RoundOutcome({11: forged, 12: honest[1], 13: honest[2]}, {}, [], 0.1)
    state, excluded = _quiet(afl.server_update, afl.server_init(D, C), list(outcome.decoded.values()))[0]
    assert state.clients == (1, 2)
    assert server_app._accepted_nodes(outcome, excluded) == [12, 13]
    log = server_app._log("afl", 1, outcome, excluded, {11: 5, 12: 1, 13: 2})
    assert list(log["rejected"]) == ["partition 5"] and "NaN" in log["rejected"]["partition 5"]
