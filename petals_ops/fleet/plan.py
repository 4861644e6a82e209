"""``petals-ops plan``: blocks per GPU from Petals' own memory accounting, coverage, and the exact commands.

Memory per block and the attention-cache budget come from petals itself (``get_block_size`` and the
arithmetic of ``Server._choose_num_blocks``), through :func:`petals_ops.client.door.block_memory`.
Works offline: GPU memory comes from the inventory (default: an A10 as NVML reports it).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import asdict, dataclass, field
from typing import Sequence

from petals_ops.util.errors import InputError
from petals_ops.fleet import containers as C
from petals_ops.fleet.schema import Inventory
from petals_ops.fleet.peers import swarm_note
from petals_ops.fleet.executor import Target, resolve_targets
from petals_ops.fleet.ssh import SSHOptions
from petals_ops.client.models import KNOWN_MODELS, resolve_model

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
    as_model: str | None = None  # set by plan_as_if: the blocks per server are that model's
    assignment: dict[str, list[str]] = field(default_factory=dict)  # plan_as_if: host -> one range per server
    swarm: str = ""  # which swarm the servers join (the public one without initial_peers / new_swarm)

    def to_dict(self) -> dict:
        d = asdict(self)
        for s, src in zip(d["servers"], self.servers):
            s["command_line"] = src.command_line
        return d


def _memory_source(model_name: str):
    ref = resolve_model(model_name, option="--as-model")
    if ref.path:
        return ref, ref.path
    known = KNOWN_MODELS.get(ref.name)
    if not known:
        raise InputError(f"plan knows no config for model {ref.name}",
                         fix=f"use one of {', '.join(KNOWN_MODELS)} or a local checkpoint directory")
    return ref, {"hidden_size": known["hidden_size"], "n_layer": known["num_blocks"],
                 "n_head": known["n_head"],
                 "vocab_size": known["vocab_size"]}


def _memory_fn(source):
    """Memoised Petals block accounting of ``source``: (dtype, quant, cache tokens) -> block_memory()."""
    from petals_ops.client import door

    memo: dict = {}

    def memory(dtype, quant, tokens):
        key = (dtype, quant, tokens)
        if key not in memo:
            memo[key] = door.block_memory(source, torch_dtype=dtype or "auto", quant_type=quant,
                                          attn_cache_tokens=tokens)
        return memo[key]

    return memory


def _blocks_that_fit(m: dict, gpu_memory_bytes: int, num_blocks: int) -> int:
    """Petals' ``_choose_num_blocks`` arithmetic: (GPU memory - autograd reserve) / (block + its cache)."""
    n = math.floor((gpu_memory_bytes - m["autograd_bytes"]) / (m["block_bytes"] + m["cache_bytes_per_block"]))
    return max(0, min(n, num_blocks))


def _one_model(targets: Sequence[Target]) -> str:
    models = {t.server.model for t in targets}
    if len(models) != 1:
        raise InputError("the selected hosts serve different models",
                         fix="plan one model at a time with --hosts")
    return models.pop()


def make_plan(inventory: Inventory, hosts: Sequence[str] | None = None, *,
              opts: SSHOptions | None = None) -> FleetPlan:
    targets = resolve_targets(inventory, hosts, opts=opts, require_slots=True)
    ref, source = _memory_source(_one_model(targets))
    memory = _memory_fn(source)

    num_blocks = ref.num_blocks or memory(None, "none", None)["num_blocks"]
    plan = FleetPlan(model=ref.name, num_blocks=num_blocks, swarm=swarm_note(targets))
    held = [0] * num_blocks
    soft_total = 0
    for t in targets:
        h, hspec, spec = t.name, t.host, t.server
        for slot in t.slots:
            # Petals' default since 2.2.0
            quant = spec.quant_type or ("nf4" if spec.device == "cuda" else "none")
            tokens = spec.attn_cache_tokens or memory(spec.torch_dtype, quant, None)["attn_cache_tokens"]
            fits: dict[str, dict[int, int]] = {}
            blocks_fit = None
            gib = None
            if spec.device == "cuda":
                gib = round(hspec.gpu_memory_bytes / 1024**3, 2)
                for q in QUANTS:
                    fits[q] = {}
                    for t in sorted({*CACHE_SIZES, tokens}):
                        fits[q][t] = _blocks_that_fit(memory(spec.torch_dtype, q, t), hspec.gpu_memory_bytes,
                                                      num_blocks)
                blocks_fit = fits[quant][tokens]
            if slot.blocks:
                start, end = slot.blocks
                if end > num_blocks:
                    raise InputError(f"hosts.{h}.server.block_indices {slot.block_indices} ends past the "
                                     f"model's {num_blocks} blocks",
                                     fix=f"use ranges within 0:{num_blocks}")
                for b in range(start, end):
                    held[b] += 1
                n = end - start
                blocks = slot.block_indices
                if blocks_fit is not None and n > blocks_fit:
                    plan.warnings.append(f"{h}/{slot.container}: {n} blocks do not fit "
                                         f"({blocks_fit} fit with {quant}, cache {tokens})")
            elif slot.num_blocks:
                n = slot.num_blocks
                blocks = f"{n} (Petals picks the span)"
                soft_total += n
                if blocks_fit is not None and n > blocks_fit:
                    plan.warnings.append(
                        f"{h}/{slot.container}: num_blocks {n} does not fit ({blocks_fit} fit)")
            else:
                n = blocks_fit
                blocks = f"auto (~{blocks_fit}, Petals picks the span)" if blocks_fit is not None else "auto"
                soft_total += n or 0
                if spec.device == "cpu":
                    plan.warnings.append(
                        f"{h}/{slot.container}: a CPU server needs num_blocks or block_indices")
            plan.total_blocks_assigned += n or 0
            plan.servers.append(ServerPlan(
                host=h, container=slot.container,
                device=spec.device if slot.gpu is None else f"cuda:{slot.gpu}",
                gpu_memory_gib=gib, fits=fits, chosen_quant=quant, chosen_cache_tokens=tokens,
                blocks_fit=blocks_fit,
                blocks=blocks, num_blocks=n, command=C.server_args(spec, slot),
            ))
    _set_coverage(plan, held, soft_total)
    return plan


def _set_coverage(plan: FleetPlan, held: list[int], soft_total: int = 0) -> None:
    plan.covered = [b for b, c in enumerate(held) if c]
    plan.uncovered = [b for b, c in enumerate(held) if not c]
    if not plan.uncovered:
        plan.covers_model = True
    elif soft_total >= len(plan.uncovered):
        plan.covers_model = "likely"  # enough blocks; Petals' block selection fills the weakest spans first
    else:
        plan.covers_model = False


def plan_as_if(inventory: Inventory, hosts: Sequence[str] | None = None, *, as_model: str, quant: str = "nf4",
               attn_cache_tokens: int | None = None, opts: SSHOptions | None = None) -> FleetPlan:
    """Contiguous block ranges for the inventory's servers, sized as if each held ``as_model``'s real blocks.

    Each server counts as one GPU of its host (``gpu_memory_bytes``, an A10 by default, also for a CPU lab
    host) running ``as_model`` with ``quant`` and Petals' default cache: five A10 hosts and BLOOM-176B in
    nf4 get 0:14, 14:28, ... 56:70, exactly a real fleet's ranges. Ranges follow the hosts' order; once the
    model is covered the next server starts a second copy at block 0. The served model (a 70-block tiny
    BLOOM in a rehearsal) must have as many blocks as ``as_model``; the commands are its servers' commands
    with the assigned ``--block_indices``.
    """
    if quant not in QUANTS:
        raise InputError(f"--quant {quant} is unknown", fix=f"use one of {', '.join(QUANTS)}")
    ref, source = _memory_source(as_model)  # the option first: its error must not wait on the inventory's
    targets = resolve_targets(inventory, hosts, opts=opts, require_slots=True)
    served = resolve_model(_one_model(targets))
    memory = _memory_fn(source)
    m = memory(None, quant, attn_cache_tokens)
    num_blocks = ref.num_blocks or m["num_blocks"]
    if served.num_blocks != num_blocks:
        has = served.num_blocks or "an unknown number of"
        raise InputError(f"the inventory's model {served.name} has {has} blocks, {ref.name} has {num_blocks}",
                         fix=f"serve a model of {num_blocks} blocks "
                             f"(e.g. 'petals-ops model tiny DIR --layers {num_blocks}')")
    plan = FleetPlan(model=served.name, num_blocks=num_blocks, as_model=ref.name,
                     swarm=swarm_note(targets))
    held = [0] * num_blocks
    cursor = 0
    for t in targets:
        h, hspec, spec = t.name, t.host, t.server
        ranges = []
        for slot in t.slots:
            fits = {q: {m["attn_cache_tokens"]: _blocks_that_fit(memory(None, q, attn_cache_tokens),
                                                                 hspec.gpu_memory_bytes, num_blocks)}
                    for q in QUANTS}
            n = fits[quant][m["attn_cache_tokens"]]
            end = min(cursor + n, num_blocks)
            blocks = f"{cursor}:{end}" if n else None
            if n == 0:
                plan.warnings.append(f"{h}/{slot.container}: not one block of {ref.name} fits ({quant})")
            for b in range(cursor, end):
                held[b] += 1
            if slot.block_indices and slot.block_indices != blocks:
                plan.warnings.append(f"{h}/{slot.container}: the inventory pins {slot.block_indices}; "
                                     f"this plan assigns {blocks}")
            ranges.append(blocks)
            plan.total_blocks_assigned += end - cursor
            plan.servers.append(ServerPlan(
                host=h, container=slot.container,
                device=spec.device if slot.gpu is None else f"cuda:{slot.gpu}",
                gpu_memory_gib=round(hspec.gpu_memory_bytes / 1024**3, 2), fits=fits, chosen_quant=quant,
                chosen_cache_tokens=m["attn_cache_tokens"], blocks_fit=n, blocks=blocks or "none",
                num_blocks=end - cursor,
                command=C.server_args(spec, dataclasses.replace(slot, block_indices=blocks, num_blocks=None)),
            ))
            cursor = 0 if end == num_blocks else end
        plan.assignment[h] = ranges
    _set_coverage(plan, held)
    return plan
