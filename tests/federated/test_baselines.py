"""FedAvg/FedProx lose accuracy as the label skew grows (α shrinks); AFL and DeepAFL give the same model for
every partition. Numbers are measured in the test, never hard-coded; the margins are a fraction of the effect
measured here (FedAvg on digits: ≈0.92 IID vs ≈0.55 at α = 0.01)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from federated import afl, baselines, deepafl, partition

FED = dict(classes=10, rounds=10, local_epochs=5, batch_size=16, lr=0.1, client_fraction=0.5, seed=0)


@pytest.fixture(scope="module")
def split():
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.3, random_state=0)
    parts = {"iid": partition.iid(y_train, 10, seed=0), "dir0.01": partition.dirichlet(y_train, 10, 0.01, seed=0)}
    return x_train, y_train, x_test, y_test, parts


def test_gradient_baselines_degrade_with_skew_while_analytic_methods_stay_fixed(split):
    x, y, x_test, y_test, parts = split
    acc = {}
    for name, p in parts.items():
        acc["fedavg", name] = baselines.fedavg(x, y, p, eval_data=(x_test, y_test), **FED).history[-1][1]
        acc["fedprox", name] = baselines.fedprox(x, y, p, mu=0.1, eval_data=(x_test, y_test), **FED).history[-1][1]
        ups = [afl.client_stats(x[q], y[q], 1.0, 10, i) for i, q in enumerate(p)]
        weight = afl.aggregate(ups, dim=x.shape[1], classes=10, global_gamma=1.0).weight
        acc["afl", name] = float(np.mean(np.asarray(afl.predict(weight, x_test)) == y_test))
        model = deepafl.DeepAFL(phi_dim=48, block_dim=32, layers=3, seed=0)
        acc["deepafl", name] = model.fit_federated([(x[q], y[q]) for q in p], classes=10).score(x_test, y_test)
    for method in ("fedavg", "fedprox"):
        assert acc[method, "iid"] > 0.85, acc
        assert acc[method, "dir0.01"] < acc[method, "iid"] - 0.1, acc
    for method in ("afl", "deepafl"):
        assert acc[method, "dir0.01"] == acc[method, "iid"], acc
    assert acc["afl", "dir0.01"] > acc["fedavg", "dir0.01"] + 0.1, acc


def test_fedavg_reports_history_and_bytes(split):
    x, y, x_test, y_test, parts = split
    result = baselines.fedavg(x, y, parts["iid"], eval_data=(x_test, y_test), eval_every=5, **FED)
    assert [r for r, _ in result.history] == [5, 10]
    size = sum(np.asarray(v).nbytes for v in result.params.values())
    assert size == 4 * (64 * 10 + 10)
    assert result.comm["rounds"] == 10
    assert result.comm["up_bytes_total"] == result.comm["down_bytes_total"] == 10 * 5 * size


def test_fedavg_argument_checks(split):
    x, y, _, _, parts = split
    with pytest.raises(ValueError, match="mu"):
        baselines.fedprox(x, y, parts["iid"], mu=0.0, **FED)
    with pytest.raises(ValueError, match="client_fraction"):
        baselines.fedavg(x, y, parts["iid"], **{**FED, "client_fraction": 0.0})
    with pytest.raises(ValueError, match="NaN"):
        baselines.fedavg(np.full_like(x, np.nan), y, parts["iid"], **FED)


def test_fedavg_continues_from_initial_params_and_checks_them(split):
    x, y, x_test, y_test, parts = split
    short = {**FED, "rounds": 3}
    first = baselines.fedavg(x, y, parts["iid"], **short)
    # A run with a negligible learning rate stays where it started: at the given model when one is given, at the
    # fresh (zero) linear init otherwise.
    still = baselines.fedavg(x, y, parts["iid"], **{**short, "lr": 1e-9, "seed": 5}, initial_params=first.params)
    fresh = baselines.fedavg(x, y, parts["iid"], **{**short, "lr": 1e-9, "seed": 5})
    for name in first.params:
        assert np.abs(np.asarray(still.params[name]) - np.asarray(first.params[name])).max() < 1e-6
    assert np.abs(np.asarray(fresh.params["w"]) - np.asarray(first.params["w"])).max() > 1e-3
    more = baselines.fedavg(x, y, parts["iid"], **short, initial_params=first.params, eval_data=(x_test, y_test))
    assert more.history[-1][1] >= baselines.accuracy(first.params, x_test, y_test) - 0.02
    with pytest.raises(ValueError, match="initial_params"):
        baselines.fedavg(x, y, parts["iid"], **short, initial_params={"w": first.params["w"]})
    bad = {**first.params, "w": np.zeros((3, 10), np.float32)}
    with pytest.raises(ValueError, match=r"initial_params\['w'\]"):
        baselines.fedavg(x, y, parts["iid"], **short, initial_params=bad)
