"""Flower apps for analytic federated learning: a ``ServerApp`` and a ``ClientApp`` for AFL and DeepAFL.

- :mod:`federated.flower.server_app` -- ``app`` (configured by Flower's run config) and ``make_server_app``;
- :mod:`federated.flower.client_app` -- ``app``; the node's ``partition-id``/``num-partitions`` select its data;
- :mod:`federated.flower.records` -- :mod:`federated.messages` on Flower's wire (``RecordDict``);
- :mod:`federated.flower.rounds` -- one round with a deadline: answered / failed / missing;
- :mod:`federated.flower.task` -- run-config keys and defaults, datasets and partitions;
- :mod:`federated.flower.local` -- ``LocalFederation``: SuperLink + SuperNodes on 127.0.0.1 and ``flwr run``;
- ``federated/flower/app/`` -- the Flower App folder for ``flwr run`` (simulation or deployment engine).

Importing this package does not import Flower; the submodules do.
"""
