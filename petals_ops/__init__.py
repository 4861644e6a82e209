"""petals-ops: run nodes of a Petals swarm, watch its health, and benchmark GSM8K through it.

Importing this package is cheap: torch, transformers, hivemind and petals are imported only inside
the functions that need them (through :mod:`petals_ops.petals_door`).
"""

__version__ = "0.1.0"
