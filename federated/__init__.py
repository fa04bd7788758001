"""Analytic federated learning (AFL, DeepAFL), partitions, gradient baselines, Flower and multi-process runs."""

from analytic.lazy import lazy_namespace

# Public names -> defining module, loaded on first access.
_EXPORTS: dict[str, str] = {
    "DeepAFL": "federated.deepafl",
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, globals())
