"""Loading a model for the client: through the swarm (petals) or in this process (transformers).

Both return the same :class:`LoadedModel`, so callers (the backends, tuning, ``generate``) do not care
where the blocks run. The petals client is given a bounded ``max_retries``: by default it retries a
missing block forever. Processes the client forks (its DHT and p2pd) die with us, even on ``kill -9``.
Heavy imports (torch, transformers, petals) happen inside functions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from petals_ops.client.models import ModelRef
from petals_ops.util.errors import InputError, OpsError, one_line
from petals_ops.util.output import raise_log_level

DEFAULT_MAX_RETRIES = 3


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    backend: str  # "petals" or "local"
    ref: ModelRef
    initial_peers: list[str] = field(default_factory=list)
    pre_seq_len: int = 0  # tuned prompts the model prepends itself (petals_ops.tune): sessions make room
    prompts_id: str | None = None  # id of the tuned prompts loaded (client.tuned_prompts), if any

    def close(self) -> None:
        """Release the swarm connection (DHT, p2pd) of a petals backend; a no-op for local."""
        if self.backend == "petals" and self.model is not None:
            from petals_ops.client import door as petals_door

            petals_door.close_client(self.model)
            self.model = None

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _require_local_checkpoint(ref: ModelRef) -> str:
    if ref.path is None:
        raise InputError(
            f"model {ref.name} is not on this machine; the client needs its embeddings and tokenizer",
            fix="pass --model DIR of a local checkpoint",
        )
    return ref.path


def load_tokenizer(ref: ModelRef):
    """The checkpoint's tokenizer alone: cheap, and needs no swarm (usage checks run before connecting)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_require_local_checkpoint(ref))


def load_swarm_model(
    ref: ModelRef,
    initial_peers: Sequence[str],
    *,
    max_retries: int = DEFAULT_MAX_RETRIES,
    request_timeout: float = 60.0,
    **model_kwargs,
) -> LoadedModel:
    """Connect to the swarm and load the client side (embeddings, LM head) of ``ref``.

    ``model_kwargs``: more for petals' ``from_pretrained`` (``tuning_mode``, ``pre_seq_len``: tune)."""
    from petals_ops.client import door
    from transformers import AutoTokenizer

    path = _require_local_checkpoint(ref)
    tokenizer = AutoTokenizer.from_pretrained(path)  # before connecting: a failure here leaks nothing
    die_with_parent_in_forks()
    raise_log_level("petals")  # keep INFO chatter out of streamed output
    try:
        model = door.AutoDistributedModelForCausalLM.from_pretrained(
            path,
            initial_peers=list(initial_peers),
            dht_prefix=ref.dht_prefix,
            max_retries=max_retries,
            request_timeout=request_timeout,
            connect_timeout=5,
            daemon_startup_timeout=30,
            show_route=False,
            **model_kwargs,
        )
    except Exception as e:
        if "bootstrap" in str(e) or "multiaddr" in str(e) or "Daemon failed" in str(e):
            raise OpsError(
                f"cannot reach the swarm at initial peers {' '.join(initial_peers)} "
                f"({one_line(e, 160, tail=True)})",
                fix="check --initial-peers and that the DHT is up",
            ) from e
        raise
    return LoadedModel(model.eval(), tokenizer, "petals", ref, list(initial_peers))


def load_local_model(ref: ModelRef) -> LoadedModel:
    """The same checkpoint in-process with transformers (no swarm), for comparison and swarm-less runs."""
    from petals_ops.client import door as petals_door  # noqa: F401  (one import order for every process)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _require_local_checkpoint(ref)
    import torch

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return LoadedModel(model.eval(), AutoTokenizer.from_pretrained(path), "local", ref)


def die_with_parent_in_forks() -> None:
    """Processes this one forks (the petals client's DHT; it starts its p2pd) die with it, even on kill -9.

    Without this a killed bench leaves its DHT process and p2pd running forever (Linux prctl
    PR_SET_PDEATHSIG, set in the child after every os.fork/multiprocessing fork; a no-op elsewhere).
    """
    import ctypes
    import os
    import signal

    if getattr(die_with_parent_in_forks, "done", False) or not sys.platform.startswith("linux"):
        return
    forking = {"pid": os.getpid()}

    def before() -> None:
        forking["pid"] = os.getpid()

    def in_child() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 (no prctl: nothing to set)
            return
        if os.getppid() != forking["pid"]:  # the parent died before prctl took effect
            os._exit(1)

    os.register_at_fork(before=before, after_in_child=in_child)
    die_with_parent_in_forks.done = True
