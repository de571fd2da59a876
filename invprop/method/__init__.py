"""The InvP method core: memory bank, invariance propagation and losses (pure functions).

Modules: `bank` (MemoryBank), `propagation` (the propagators and `propagate`), `loss`.
"""

import sys
import types
import warnings
from typing import Any

from invprop.method import propagation
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
from invprop.method.propagation import (
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


def _renamed_module(old: str, module: types.ModuleType) -> types.ModuleType:
    """A stand-in for a module's former name: reading any name from it warns once per
    place and returns the renamed module's."""
    alias = types.ModuleType(old, f"Deprecated alias of {module.__name__}.")

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # what the import system asks of any module
            raise AttributeError(name)
        warnings.warn(
            f"{old} was renamed {module.__name__}; import {name} from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(module, name)

    alias.__getattr__ = __getattr__  # type: ignore[method-assign]
    return alias


# The module of propagators was invprop.method.propagate, a name the function `propagate`
# hid (`import invprop.method.propagate as m` gave the function). Code that imports from
# the old module path keeps working, with a DeprecationWarning.
sys.modules.setdefault(
    f"{__name__}.propagate", _renamed_module(f"{__name__}.propagate", propagation)
)
