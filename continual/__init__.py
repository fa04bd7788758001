"""Analytic continual learners (ACIL, DS-AL, GACL, F-OAL, AIR), closed-form peers (RanPAC, NCM, FeCAM) and the
multi-label L3A, with scenarios, metrics and baselines."""

from analytic.lazy import lazy_namespace

# Public names -> defining module, loaded on first access.
_EXPORTS: dict[str, str] = {
    "ACIL": "continual.acil",
    "DSAL": "continual.dsal",
    "GACL": "continual.gacl",
    "FOAL": "continual.foal",
    "AIR": "continual.air",
    "RanPAC": "continual.prototypes",
    "NCM": "continual.prototypes",
    "FeCAM": "continual.prototypes",
    "L3A": "continual.l3a",
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS, globals())
