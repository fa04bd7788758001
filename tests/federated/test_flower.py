"""The Flower apps really run: one Ray simulation with 4 SuperNodes on Dirichlet-partitioned digits runs AFL (with
a client that raises and one that never answers in wave 1, both merged in wave 2), DeepAFL and AFCL (5 tasks, one
wave each, a client raising in task 1 and merged in that task's second wave); the models are compared with the
in-process :mod:`federated` protocols on the same partitions.

Tolerances: the clients' statistics are float32 (the transport dtype) in both the Flower run and the in-process
reference, and both servers sum and solve in float64, so the two agree to float32 rounding of what crosses the wire
(≤ 1e-6 relative, the issue's bound). Against centralized float64 ridge the float32 Grams alone cost ~1e-5 relative
on digits (condition number ~1e3 at γ = 1), hence 1e-3 there.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from flwr.app import ArrayRecord, ConfigRecord, RecordDict  # noqa: E402

from federated import afcl, afl, deepafl  # noqa: E402
from federated import messages as msg  # noqa: E402
from federated.flower import records, task  # noqa: E402

CLIENTS = 4
COMMON = {"num-partitions": CLIENTS, "min-clients": CLIENTS, "alpha": 0.3, "connect-timeout": 180.0}


def _like_the_workers():
    """BLAS on one thread, as in the simulation's workers (Ray sets ``OMP_NUM_THREADS`` to a client's one CPU).

    DeepAFL's clients chain float32 products and solves over layers; OpenBLAS rounds some small float32 products
    differently on one thread than on two, and the chain carried that to ~4e-5 relative in ``W`` (measured on a
    2-core AMD EPYC; equal to 1e-6 with one thread on both sides). The in-process reference therefore runs with
    the workers' thread count, so that the comparison tests the protocol, not the BLAS threading."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    """Run AFL then DeepAFL in one simulation (Ray starts once) through the real ServerApp logic and ClientApp."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from federated.flower import client_app, server_app

    out = tmp_path_factory.mktemp("flower")
    configs = {
        "afl": task.resolve_config({}, {**COMMON, "method": "afl", "waves": 2, "round-timeout": 15.0,
                                        "faults": "1:raise@1,2:silent@1", "output-dir": str(out / "afl")}),
        "deepafl": task.resolve_config({}, {**COMMON, "method": "deepafl", "layers": 2, "phi-dim": 48,
                                            "block-dim": 40, "round-timeout": 60.0,
                                            "output-dir": str(out / "deepafl")}),
        "deepafl_fault": task.resolve_config({}, {**COMMON, "method": "deepafl", "layers": 1, "phi-dim": 48,
                                                  "block-dim": 40, "round-timeout": 60.0, "faults": "3:raise@2",
                                                  "output-dir": str(out / "deepafl_fault")}),
        "afcl": task.resolve_config({}, {**COMMON, "method": "afcl", "tasks": 5, "task-order": "3,0,4,1,2",
                                         "waves": 2, "round-timeout": 30.0, "faults": "1:raise@2",
                                         "output-dir": str(out / "afcl")}),
    }
    server = ServerApp()

    @server.main()
    def main(grid, context):
        # No pause between the runs: AFL's silent client still sleeps (round-timeout + 5 s from the start of wave
        # 1) when AFL's rounds end, and the server itself drains that message before returning, so its late context
        # write-back cannot erase the DeepAFL client state of the next run (rounds.TrackedGrid).
        for config in configs.values():
            server_app.run(grid, config)

    run_simulation(server, client_app.app, num_supernodes=CLIENTS, backend_config={
        "client_resources": {"num_cpus": 1},
        "init_args": {"num_cpus": 2, "logging_level": "error", "log_to_driver": False},
    })
    results = {}
    for name, config in configs.items():
        report = json.loads((out / name / "result.json").read_text())
        with np.load(out / name / "result.npz") as arrays:
            results[name] = (config, report, dict(arrays))
    return results


def _client_data(config):
    split = task.load_split(config)
    parts = task.partition_indices(split.y_train, config, CLIENTS)
    return split, [(split.x_train[p], split.y_train[p]) for p in parts]


def _afl_uploads(config, clients):
    return [afl.client_stats(x, y, config["gamma"], 10, client_id=k, dtype=np.float32)
            for k, (x, y) in enumerate(clients)]


def test_afl_flower_run_equals_in_process_afl_and_centralized_ridge(simulation):
    config, report, arrays = simulation["afl"]
    split, clients = _client_data(config)
    assert min(len(y) for _, y in clients) >= config["min-size"]
    assert len({int(np.bincount(y, minlength=10).argmax()) for _, y in clients}) > 1  # really label-skewed
    reference = np.asarray(afl.aggregate(_afl_uploads(config, clients), dim=split.x_train.shape[1], classes=10,
                                         global_gamma=config["global-gamma"]).weight)
    assert _relative(arrays["weight"], reference) <= 1e-6
    x, y = split.x_train, np.eye(10)[split.y_train]
    centralized = np.linalg.solve(x.T @ x + config["global-gamma"] * np.eye(x.shape[1]), x.T @ y)
    assert _relative(arrays["weight"], centralized) <= 1e-3
    assert report["merged_partitions"] == list(range(CLIENTS)) and report["missing_partitions"] == []
    assert report["count"] == len(split.y_train)
    assert report["test_accuracy"] == pytest.approx(float(np.mean(np.argmax(split.x_test @ reference, 1)
                                                                  == split.y_test)), abs=1e-9)
    assert 0.8 < report["client_accuracy"] <= 1.0  # the AFLBroadcast answer reached the clients


def test_afcl_flower_run_equals_in_process_afcl_after_every_task_and_joint_ridge(simulation):
    config, report, arrays = simulation["afcl"]
    split = task.load_split(config)
    streams = task.task_streams(config, split.y_train, CLIENTS)
    assert [r["type"] for r in report["rounds"]] == ["afcl task 0", "afcl task 1", "afcl task 1", "afcl task 2",
                                                     "afcl task 3", "afcl task 4"]
    assert "injected fault" in next(iter(report["rounds"][1]["failed"].values()))
    state = afcl.afcl_init(split.x_train.shape[1], 10, config["global-gamma"])
    for t in range(5):
        uploads = [afl.client_stats(split.x_train[rows], split.y_train[rows], config["gamma"], 10, client_id=k,
                                    dtype=np.float32) for k, rows in enumerate(streams.streams[t])]
        state, excluded = afcl.server_task_update(state, uploads, task=t)
        assert excluded == [] and report["tasks"][t]["merged_partitions"] == list(range(CLIENTS))
        # Same float32 statistics, both servers in float64: agreement to float32 rounding of the transport.
        assert _relative(arrays[f"weight_task_{t}"], state.weight) <= 1e-6
        seen = np.concatenate([streams.streams[s][k] for s in range(t + 1) for k in range(CLIENTS)])
        x, y = split.x_train[seen], np.eye(10)[split.y_train[seen]]
        joint = np.linalg.solve(x.T @ x + config["global-gamma"] * np.eye(x.shape[1]), x.T @ y)
        assert _relative(arrays[f"weight_task_{t}"], joint) <= 1e-3  # float32 Grams, module docstring
        assert set(report["tasks"][t]["classes"]) == set(streams.classes[t].tolist())
    assert report["tasks"][0]["classes"] == [6, 7]  # task-order 3,0,4,1,2 puts class group 3 first
    assert report["count"] == len(split.y_train) and 0.8 < report["test_accuracy"] <= 1.0


def test_afl_failing_and_silent_clients_are_dropped_reported_and_the_rest_aggregated(simulation):
    config, report, arrays = simulation["afl"]
    _, clients = _client_data(config)
    first = report["rounds"][0]
    assert first["answered"] == [0, 3]
    assert list(first["failed"]) == ["partition 1"] and "injected fault" in first["failed"]["partition 1"]
    assert first["missing"] == ["partition 2"]
    assert first["merged_so_far"] == [0, 3]
    uploads = _afl_uploads(config, clients)
    wave_one = afl.aggregate([uploads[0], uploads[3]], dim=uploads[0].dim, classes=10,
                             global_gamma=config["global-gamma"]).weight
    assert _relative(arrays["weight_wave_1"], wave_one) <= 1e-6
    # The silent client's wave-1 message finished after its round and was drained before the run returned.
    assert report["late_replies"] == 1 and report["unfinished_messages"] == 0


def test_afl_clients_answering_in_a_later_wave_merge_exactly(simulation):
    config, report, arrays = simulation["afl"]
    _, clients = _client_data(config)
    assert [r["answered"] for r in report["rounds"]] == [[0, 3], [1, 2]]
    uploads = _afl_uploads(config, clients)
    earlier = afl.aggregate([uploads[0], uploads[3]], dim=uploads[0].dim, classes=10,
                            global_gamma=config["global-gamma"])
    later = afl.aggregate([uploads[1], uploads[2]], global_gamma=config["global-gamma"], state=earlier.state)
    assert _relative(arrays["weight"], later.weight) <= 1e-6
    assert not np.allclose(arrays["weight_wave_1"], arrays["weight"], rtol=1e-3)  # the late rows did count


def test_deepafl_flower_run_equals_in_process_deepafl(simulation):
    config, report, arrays = simulation["deepafl"]
    split, clients = _client_data(config)
    setup = msg.DeepAFLSetup(config["seed"], 64, 10, config["phi-dim"], config["block-dim"], config["layers"],
                             config["lam"], config["deepafl-gamma"], config["activation"],
                             config["input-activation"])
    server = deepafl.DeepAFLServer(setup, dtype=np.float64)
    with _like_the_workers():
        participants = [deepafl.DeepAFLClient(k, x, y, setup, dtype=np.float32) for k, (x, y) in enumerate(clients)]
        deepafl.run_federated(participants, server)
    assert [r["type"] for r in report["rounds"]] == ["classifier 0", "block 0", "classifier 1", "block 1",
                                                      "classifier 2"]  # 2T + 1 rounds
    assert all(r["answered"] == list(range(CLIENTS)) for r in report["rounds"])
    assert report["late_replies"] == 0 and report["unfinished_messages"] == 0
    assert _relative(arrays["weight"], server.weights[-1]) <= 1e-6
    for t, omega in enumerate(server.omegas):
        assert _relative(arrays[f"omega_{t}"], omega) <= 1e-6
    first, blocks = deepafl.make_layers(setup, dtype=np.float32)
    model = deepafl.DeepAFLModel(first, blocks, tuple(jnp.asarray(o, jnp.float32) for o in server.omegas),
                                 jnp.asarray(server.weights[-1], jnp.float32))
    scores = np.asarray(deepafl.forward(model, jnp.asarray(split.x_test, jnp.float32)))
    accuracy = float(np.mean(np.argmax(scores, 1) == split.y_test))
    assert report["test_accuracy"] == pytest.approx(accuracy, abs=1e-9) and accuracy > 0.8


def test_deepafl_client_failing_mid_protocol_is_dropped_for_the_remaining_rounds(simulation):
    config, report, arrays = simulation["deepafl_fault"]
    _, clients = _client_data(config)
    assert [r["answered"] for r in report["rounds"]] == [[0, 1, 2, 3], [0, 1, 2], [0, 1, 2]]
    assert list(report["rounds"][1]["failed"]) == ["partition 3"]
    assert report["merged_partitions"] == [0, 1, 2] and report["missing_partitions"] == [3]
    # The same schedule in process: classifier 0 over all four clients, block 0 and classifier 1 without client 3.
    setup = msg.DeepAFLSetup(config["seed"], 64, 10, 48, 40, 1, config["lam"], config["deepafl-gamma"],
                             config["activation"], config["input-activation"])
    server = deepafl.DeepAFLServer(setup, dtype=np.float64)
    with _like_the_workers():
        participants = [deepafl.DeepAFLClient(k, x, y, setup, dtype=np.float32) for k, (x, y) in enumerate(clients)]
        weight = server.classifier_round([c.classifier_upload() for c in participants])
        omega = server.block_round([c.block_upload(weight) for c in participants[:3]])
        for c in participants[:3]:
            c.apply_block(omega)
        server.classifier_round([c.classifier_upload() for c in participants[:3]])
    assert _relative(arrays["weight"], server.weights[-1]) <= 1e-6
    assert _relative(arrays["omega_0"], server.omegas[0]) <= 1e-6


# ------------------------------------------------------------------------------------ wire format and config


def test_records_round_trip_every_message_and_cast_floats_to_the_transport_dtype():
    upload = msg.AFLUpload(2, np.eye(3), np.ones((3, 2)), 7, 0.5)
    setup = msg.DeepAFLSetup(1, 4, 3, 8, 6, 2, 1.0, 0.05, "gelu", "tanh")
    record = records.to_record(upload, setup, config={"round": 3})
    back = records.from_record(record, msg.AFLUpload)
    assert back.xtx.dtype == np.float32 and np.array_equal(back.xtx, np.eye(3)) and back.count == 7
    assert records.from_record(record, msg.DeepAFLSetup) == setup
    assert records.config_of(record) == {"round": 3}
    kept = records.from_record(records.to_record(upload, transport_dtype=None), msg.AFLUpload)
    assert kept.xtx.dtype == np.float64


def test_malformed_replies_raise_value_errors_naming_the_problem():
    with pytest.raises(ValueError, match="carries no AFLUpload"):
        records.from_record(RecordDict({"other": ConfigRecord({"a": 1})}), msg.AFLUpload)
    with pytest.raises(ValueError, match="RecordDict"):
        records.from_record({"xtx": np.eye(2)}, msg.AFLUpload)
    incomplete = RecordDict({"afl_upload": ArrayRecord(), "afl_upload.scalars": ConfigRecord({"kind": "afl_upload"})})
    with pytest.raises(ValueError, match="missing field"):
        records.from_record(incomplete, msg.AFLUpload)
    with pytest.raises(TypeError, match="message class"):
        records.from_record(RecordDict(), dict)


def test_run_config_is_validated_before_anything_runs():
    from federated.flower.server_app import make_server_app

    with pytest.raises(ValueError, match="unknown run-config key"):
        task.resolve_config({"gama": 1.0})
    with pytest.raises(ValueError, match="must be int"):
        task.resolve_config({"layers": 1.5})
    with pytest.raises(ValueError, match="'method'"):
        make_server_app(method="fedavg")
    with pytest.raises(ValueError, match="faults entry"):
        task.resolve_config({"faults": "1:explode"})
    assert task.parse_faults("1:raise, 2:silent@3") == {1: ("raise", 1), 2: ("silent", 3)}
    assert task.resolve_config({"gamma": 2})["gamma"] == 2.0  # TOML ints are accepted for float keys
    with pytest.raises(ValueError, match="partition-id 5"):
        task.load_partition(task.DEFAULTS, 5, 3)
    assert jax.config.jax_enable_x64  # conftest: the references above are float64


def test_app_folder_declares_exactly_the_run_config_keys_and_real_components():
    import importlib

    from flwr.clientapp import ClientApp
    from flwr.common.config import validate_config
    from flwr.serverapp import ServerApp

    from federated.flower.local import APP_DIR

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    valid, errors, _ = validate_config(project, check_module=False)
    assert valid, errors
    app = project["tool"]["flwr"]["app"]
    assert set(app["config"]) == set(task.DEFAULTS)
    assert task.resolve_config(app["config"])["method"] == "afl"
    for name, cls in (("serverapp", ServerApp), ("clientapp", ClientApp)):
        module, attr = app["components"][name].split(":")
        assert isinstance(getattr(importlib.import_module(module), attr), cls)


def test_local_federation_checks_its_arguments_without_starting_anything():
    from federated.flower.local import LocalFederation, _toml_value

    with pytest.raises(ValueError, match="num_supernodes"):
        LocalFederation(0)
    federation = LocalFederation(2)
    assert not federation.procs and federation.address.startswith("127.0.0.1:")
    with pytest.raises(ValueError, match="output-dir"):
        federation.run({"method": "afl"})
    federation.stop()
    assert [_toml_value(v) for v in (True, 3, 0.5, "/tmp/x")] == ["true", "3", "0.5", "'/tmp/x'"]
    with pytest.raises(ValueError, match="whitespace"):
        _toml_value("a b")


def test_features_dataset_reads_the_feature_file_split_and_partitions_it(tmp_path):
    from continual.data import Split, save_feature_file

    rng = np.random.default_rng(0)
    split = Split(rng.standard_normal((60, 5)).astype(np.float32), rng.integers(0, 4, 60),
                  rng.standard_normal((20, 5)).astype(np.float32), rng.integers(0, 4, 20))
    path = save_feature_file(tmp_path / "feats.npz", split)
    config = task.resolve_config({}, {"dataset": "features", "features-file": str(path), "alpha": 1.0,
                                      "min-size": 1})
    loaded = task.load_split(config)
    for got, want in zip(loaded[:4], split):
        np.testing.assert_array_equal(got, want)
    assert loaded.classes == 4
    parts = [task.load_partition(config, k, 3) for k in range(3)]
    assert sum(len(y) for _, y, _ in parts) == 60
    with pytest.raises(ValueError, match="features-file"):
        task.load_split(task.resolve_config({}, {"dataset": "features"}))
