"""analytic: the closed-form ridge / recursive-least-squares core every other package calls.

See docs/architecture.md and docs/methods.md §1: additive statistics (``GramStats``), one SPD solve
(``ridge_solve``), the Woodbury recursion (``rls_update``), fixed feature buffers, sharded accumulation and
checkpoints.
"""

from analytic.buffers import ACTIVATIONS, GaussianKernelBuffer, RandomBuffer, feature_fusion
from analytic.checkpoint import CheckpointError, load_state, save_state
from analytic.classes import expand_classes, one_hot
from analytic.dtypes import default_float, row_bucket
from analytic.estimator import AnalyticLinear
from analytic.gram import (
    GramStats,
    gram_accumulate,
    gram_accumulate_checked,
    gram_init,
    gram_merge,
    gram_solve,
    gram_update,
)
from analytic.health import NumericalBreakdownError
from analytic.rls import RLSState, rls_init, rls_predict, rls_step, rls_step_checked, rls_update
from analytic.sharded import data_mesh, sharded_gram_update
from analytic.solve import RidgeSolveWarning, cholesky_ridge_solve, eigh_ridge_solve, ridge_fit, ridge_solve

__all__ = [
    "ACTIVATIONS", "AnalyticLinear", "CheckpointError", "GaussianKernelBuffer", "GramStats",
    "NumericalBreakdownError", "RLSState", "RandomBuffer", "RidgeSolveWarning", "cholesky_ridge_solve", "data_mesh",
    "default_float", "eigh_ridge_solve", "expand_classes", "feature_fusion", "gram_accumulate",
    "gram_accumulate_checked", "gram_init",
    "gram_merge", "gram_solve", "gram_update", "load_state", "one_hot", "ridge_fit", "ridge_solve", "rls_init",
    "rls_predict", "rls_step", "rls_step_checked", "rls_update", "row_bucket", "save_state", "sharded_gram_update",
]
