"""The InvP method core: memory bank, invariance propagation and losses (pure functions)."""

from invprop.method.bank import MemoryBank, knn_table, neighbours_excluding_self, table_purity
from invprop.method.loss import (
    BACKGROUND_MODES,
    POSITIVE_MODES,
    InvPLoss,
    TopM,
    bank_similarities,
    instance_loss,
    invariance_loss,
    invp_loss,
    ramp_weight,
    select_positives,
    top_background,
)
from invprop.method.propagate import (
    PROPAGATORS,
    Propagation,
    hop_counts,
    max_positives,
    propagate,
    propagate_all,
    propagate_concat,
    propagate_exact,
)

__all__ = [
    "BACKGROUND_MODES",
    "POSITIVE_MODES",
    "PROPAGATORS",
    "InvPLoss",
    "MemoryBank",
    "Propagation",
    "TopM",
    "bank_similarities",
    "hop_counts",
    "instance_loss",
    "invariance_loss",
    "invp_loss",
    "knn_table",
    "max_positives",
    "neighbours_excluding_self",
    "propagate",
    "propagate_all",
    "propagate_concat",
    "propagate_exact",
    "ramp_weight",
    "select_positives",
    "table_purity",
    "top_background",
]
