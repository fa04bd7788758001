"""A Flower deployment on this machine: one SuperLink and N SuperNodes on 127.0.0.1, insecure, then ``flwr run``.

This is the deployment engine for real (separate ``flower-superlink`` / ``flower-supernode`` processes talking gRPC,
the ServerApp and every ClientApp call in their own processes), just with every address on localhost -- what a
test or a first try needs before the same commands run on real hosts (README, section "flower").

    with LocalFederation(num_supernodes=3) as federation:
        federation.run({"method": "afl", "output-dir": "/tmp/afl"})   # blocks until result.json appears
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from federated.multiprocess import free_port

APP_DIR = Path(__file__).resolve().parent / "app"
_REPO = Path(__file__).resolve().parents[2]


def _bin(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # flwr run splits --run-config on whitespace and reads literal strings: refuse what would not survive.
        if any(c.isspace() or c == "'" for c in value):
            raise ValueError(f"run-config string {value!r} must not contain whitespace or single quotes")
        return f"'{value}'"
    return repr(value)


class LocalFederation:
    """Start a SuperLink and ``num_supernodes`` SuperNodes (node config ``partition-id``/``num-partitions``).

    ``home`` becomes ``FLWR_HOME`` (Flower's config with the ``local-deployment`` connection, installed apps);
    every process inherits ``PYTHONPATH`` with this repository so the app's components import without installing.
    """

    def __init__(self, num_supernodes: int, home: str | Path | None = None, num_partitions: int | None = None,
                 simulation: bool = False) -> None:
        if num_supernodes < 1:
            raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
        self.num_supernodes, self.simulation = num_supernodes, simulation
        self.num_partitions = num_partitions or num_supernodes
        self._tmp = None if home is not None else tempfile.TemporaryDirectory(prefix="flwr-home-")
        self.home = Path(home if home is not None else self._tmp.name)
        # Flower >= 1.40 serves the Runtime, Control and Fleet APIs over HTTP on one address.
        self.address = f"127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []
        # The SuperLink/SuperNode start flower-superexec and the app processes by name: this interpreter's bin first.
        self.env = {**os.environ, "FLWR_HOME": str(self.home),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO), os.environ.get("PYTHONPATH")]))}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - closed with the process in stop()
        proc = subprocess.Popen([_bin(args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start(self) -> LocalFederation:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\n'
            f'address = "{self.address}"\ninsecure = true\n'
            + (f"\n[superlink.local-deployment.options]\nnum-supernodes = {self.num_supernodes}\n"
               "\n[superlink.local-deployment.options.backend.client-resources]\nnum-cpus = 1\n"
               if self.simulation else ""))
        host, port = self.address.rsplit(":", 1)
        self._spawn("superlink", ["flower-superlink", "--insecure", "--host", host, "--port", port,
                                  "--disable-runtime-dependency-installation",
                                  *(["--simulation"] if self.simulation else [])])
        self._wait_listening(self.address, 120.0)
        if not self.simulation:  # the simulation engine runs its own virtual SuperNodes
            for i in range(self.num_supernodes):
                self.add_supernode(i)
        return self

    def _wait_listening(self, address: str, timeout: float) -> None:
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"SuperLink did not listen on {address}:\n{self.logs()[-3000:]}") from None
                time.sleep(0.25)

    def add_supernode(self, partition_id: int) -> subprocess.Popen:
        """One more SuperNode holding ``partition_id`` (also after a run started: a late joiner)."""
        return self._spawn(f"supernode-{partition_id}", [
            "flower-supernode", "--insecure", "--superlink", self.address, "--host", "127.0.0.1",
            "--port", str(free_port()),
            "--node-config", f"partition-id={partition_id} num-partitions={self.num_partitions}"])

    def submit(self, run_config: Mapping[str, Any], app: str | Path = APP_DIR) -> subprocess.CompletedProcess:
        """``flwr run <app> local-deployment --run-config ...``; returns once the run is submitted."""
        overrides = " ".join(f"{key}={_toml_value(value)}" for key, value in run_config.items())
        cmd = [_bin("flwr"), "run", str(app), "local-deployment"] + (["--run-config", overrides] if overrides else [])
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"flwr run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def run(self, run_config: Mapping[str, Any], timeout: float = 600.0, app: str | Path = APP_DIR) -> dict[str, Any]:
        """Submit a run whose ``output-dir`` is set and wait for its ``result.json``; returns the report."""
        if not run_config.get("output-dir"):
            raise ValueError("run_config needs an 'output-dir' to collect the result from")
        result = Path(str(run_config["output-dir"])) / "result.json"
        result.unlink(missing_ok=True)
        self.submit(run_config, app)
        return self.wait(result, timeout)

    def wait(self, result: Path, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not result.exists():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead} exited" if dead else f"no result after {timeout} s"
                raise RuntimeError(f"local Flower deployment: {why}; logs in {self.home}:\n{self.logs()[-4000:]}")
            time.sleep(0.5)
        return json.loads(result.read_text())

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.home.glob("*.log")))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.log.close()  # type: ignore[attr-defined]
        self.procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalFederation:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()
