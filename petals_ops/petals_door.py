"""The one door to Petals: every import of petals or hivemind in petals-ops goes through this module.

hivemind 1.1.12 (the newest release with a Linux p2pd in its wheel) dropped the top-level re-exports
that petals 2.2.0.post1 imports (``from hivemind import PeerID, get_logger, anext, ...``). Importing
this module puts those names back on ``hivemind`` and then imports petals. Every process petals-ops
starts (DHT, servers, clients) imports petals through here; see :mod:`petals_ops.serve`.

This module is heavy (torch, transformers): import it inside functions, never at module level of a
module the CLI loads for ``--help``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import types
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("BITSANDBYTES_NOWELCOME", "1")
# transformers 4.34 on torch 2.13 warns about a deprecated pytree call at every import: noise for operators.
warnings.filterwarnings("ignore", message=".*_register_pytree_node.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*", category=UserWarning)


def _restore_hivemind_names() -> None:
    import hivemind
    import hivemind.compression
    import hivemind.p2p
    import hivemind.utils

    names = {name: getattr(hivemind.p2p, name) for name in ("P2P", "P2PContext", "P2PHandlerError", "PeerID", "PeerInfo")}
    modules = [hivemind.compression] + [
        importlib.import_module(f"hivemind.utils.{info.name}") for info in pkgutil.iter_modules(hivemind.utils.__path__)
    ]
    for module in modules:
        public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        for name in public:
            value = getattr(module, name)
            if not isinstance(value, types.ModuleType):
                names.setdefault(name, value)
    for name, value in names.items():
        if not hasattr(hivemind, name):
            setattr(hivemind, name, value)


_restore_hivemind_names()

import hivemind  # noqa: E402
import petals  # noqa: E402
from hivemind import DHT, PeerID  # noqa: E402
from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker  # noqa: E402
from petals import AutoDistributedModelForCausalLM  # noqa: E402
from petals.data_structures import ModelInfo, ServerInfo, ServerState  # noqa: E402
from petals.utils.dht import get_remote_module_infos  # noqa: E402

PETALS_VERSION = petals.__version__


def close_client(model) -> None:
    """Shut a distributed model's DHT and P2P down cleanly (otherwise their __del__ fails noisily at exit)."""
    manager = model.transformer.h.sequence_manager
    manager.shutdown()
    p2p = getattr(manager.state, "p2p", None)
    if p2p is not None:
        RemoteExpertWorker.run_coroutine(p2p.shutdown())
        manager.state.p2p = None
    manager.dht.shutdown()
HIVEMIND_VERSION = hivemind.__version__

__all__ = [
    "AutoDistributedModelForCausalLM",
    "DHT",
    "HIVEMIND_VERSION",
    "ModelInfo",
    "PETALS_VERSION",
    "PeerID",
    "RemoteExpertWorker",
    "ServerInfo",
    "ServerState",
    "close_client",
    "get_remote_module_infos",
    "hivemind",
    "petals",
]
