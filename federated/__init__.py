"""Analytic federated learning (AFL, DeepAFL), federated continual (AFCL), personalized (APFL) and one-shot
random-feature (Fed3R) analytic learning, partitions, gradient baselines, Flower and multi-process runs."""

from analytic.lazy import lazy_namespace

# Public names -> defining module, loaded on first access.
_EXPORTS: dict[str, str] = {
    "DeepAFL": "federated.deepafl",
    "AFCLServer": "federated.afcl",
    "APFL": "federated.apfl",
    "Fed3R": "federated.fed3r",
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, globals())
