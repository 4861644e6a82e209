"""``petals-ops plan``: blocks per GPU from Petals' own memory accounting, coverage, and the exact commands.

Memory per block and the attention-cache budget come from petals itself (``get_block_size`` and the
arithmetic of ``Server._choose_num_blocks``), through :func:`petals_ops.petals_door.block_memory`.
Works offline: GPU memory comes from the inventory (default: an A10 as NVML reports it).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field
from typing import Sequence

from petals_ops.errors import InputError
from petals_ops.fleet import containers as C
from petals_ops.fleet.inventory import Inventory
from petals_ops.fleet.ssh import SSHOptions, select_hosts
from petals_ops.models import KNOWN_MODELS, resolve_model

QUANTS = ("none", "int8", "nf4")
CACHE_SIZES = (2048, 4096, 8192, 16384)


@dataclass
class ServerPlan:
    host: str
    container: str
    device: str
    gpu_memory_gib: float | None
    fits: dict[str, dict[int, int]]  # quant -> attn_cache_tokens -> blocks that fit (Petals' formula)
    chosen_quant: str
    chosen_cache_tokens: int
    blocks_fit: int | None
    blocks: str  # "0:14", "14 (Petals picks the span)" or "auto (~N)"
    num_blocks: int | None
    command: list[str]

    @property
    def command_line(self) -> str:
        return shlex.join(self.command)


@dataclass
class FleetPlan:
    model: str
    num_blocks: int
    servers: list[ServerPlan] = field(default_factory=list)
    covered: list[int] = field(default_factory=list)
    uncovered: list[int] = field(default_factory=list)
    total_blocks_assigned: int = 0
    covers_model: bool | str = False
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for s, src in zip(d["servers"], self.servers):
            s["command_line"] = src.command_line
        return d


def _memory_source(model_name: str):
    ref = resolve_model(model_name)
    if ref.path:
        return ref, ref.path
    known = KNOWN_MODELS.get(ref.name)
    if not known:
        raise InputError(f"plan knows no config for model {ref.name}",
                         fix=f"use one of {', '.join(KNOWN_MODELS)} or a local checkpoint directory")
    return ref, {"hidden_size": known["hidden_size"], "n_layer": known["num_blocks"], "n_head": known["n_head"],
                 "vocab_size": known["vocab_size"]}


def make_plan(inventory: Inventory, hosts: Sequence[str] | None = None, *, opts: SSHOptions | None = None) -> FleetPlan:
    from petals_ops import petals_door as door

    opts = opts or SSHOptions.from_inventory(inventory)
    names = select_hosts(inventory, hosts, opts)
    models = {inventory.server_for(h).model for h in names}
    if len(models) != 1:
        raise InputError("the selected hosts serve different models", fix="plan one model at a time with --hosts")
    ref, source = _memory_source(models.pop())
    memo: dict = {}

    def memory(dtype, quant, tokens):
        key = (dtype, quant, tokens)
        if key not in memo:
            memo[key] = door.block_memory(source, torch_dtype=dtype or "auto", quant_type=quant, attn_cache_tokens=tokens)
        return memo[key]

    num_blocks = ref.num_blocks or memory(None, "none", None)["num_blocks"]
    plan = FleetPlan(model=ref.name, num_blocks=num_blocks)
    held = [0] * num_blocks
    soft_total = 0
    for h in names:
        hspec, spec = inventory.host(h), inventory.server_for(h)
        for slot in C.server_slots(h, hspec, spec):
            quant = spec.quant_type or ("nf4" if spec.device == "cuda" else "none")  # Petals' default since 2.2.0
            tokens = spec.attn_cache_tokens or memory(spec.torch_dtype, quant, None)["attn_cache_tokens"]
            fits: dict[str, dict[int, int]] = {}
            blocks_fit = None
            gib = None
            if spec.device == "cuda":
                gib = round(hspec.gpu_memory_bytes / 1024**3, 2)
                for q in QUANTS:
                    fits[q] = {}
                    for t in sorted({*CACHE_SIZES, tokens}):
                        m = memory(spec.torch_dtype, q, t)
                        n = math.floor((hspec.gpu_memory_bytes - m["autograd_bytes"]) / (m["block_bytes"] + m["cache_bytes_per_block"]))
                        fits[q][t] = max(0, min(n, num_blocks))
                blocks_fit = fits[quant][tokens]
            if slot.blocks:
                start, end = slot.blocks
                if end > num_blocks:
                    raise InputError(f"hosts.{h}.server.block_indices {slot.block_indices} ends past the model's {num_blocks} blocks",
                                     fix=f"use ranges within 0:{num_blocks}")
                for b in range(start, end):
                    held[b] += 1
                n = end - start
                blocks = slot.block_indices
                if blocks_fit is not None and n > blocks_fit:
                    plan.warnings.append(f"{h}/{slot.container}: {n} blocks do not fit ({blocks_fit} fit with {quant}, cache {tokens})")
            elif slot.num_blocks:
                n = slot.num_blocks
                blocks = f"{n} (Petals picks the span)"
                soft_total += n
                if blocks_fit is not None and n > blocks_fit:
                    plan.warnings.append(f"{h}/{slot.container}: num_blocks {n} does not fit ({blocks_fit} fit)")
            else:
                n = blocks_fit
                blocks = f"auto (~{blocks_fit}, Petals picks the span)" if blocks_fit is not None else "auto"
                soft_total += n or 0
                if spec.device == "cpu":
                    plan.warnings.append(f"{h}/{slot.container}: a CPU server needs num_blocks or block_indices")
            plan.total_blocks_assigned += n or 0
            plan.servers.append(ServerPlan(
                host=h, container=slot.container, device=spec.device if slot.gpu is None else f"cuda:{slot.gpu}",
                gpu_memory_gib=gib, fits=fits, chosen_quant=quant, chosen_cache_tokens=tokens, blocks_fit=blocks_fit,
                blocks=blocks, num_blocks=n, command=C.server_args(spec, slot),
            ))
    plan.covered = [b for b, c in enumerate(held) if c]
    plan.uncovered = [b for b, c in enumerate(held) if not c]
    if not plan.uncovered:
        plan.covers_model = True
    elif soft_total >= len(plan.uncovered):
        plan.covers_model = "likely"  # enough blocks; Petals' block selection fills the weakest spans first
    else:
        plan.covers_model = False
    return plan
