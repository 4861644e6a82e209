"""petals-ops: run nodes of a Petals swarm, watch its health, and benchmark GSM8K through it.

Importing this package is cheap: torch, transformers, hivemind and petals are imported only inside
the functions that need them (through :mod:`petals_ops.client.door`).
"""

__version__ = "0.1.0"

import warnings as _warnings

# transformers 4.34 on torch 2.13 warns about a deprecated pytree call at every import: noise for operators.
_warnings.filterwarnings("ignore", message=".*_register_pytree_node.*", category=FutureWarning)
_warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*", category=UserWarning)
