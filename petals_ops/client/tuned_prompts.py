"""Prompt files: the trained tensors (safetensors) with what they were trained for, and their id.

A file holds ``transformer.prompt_embeddings.weight`` (``[N, hidden]``) and, for deep_ptune,
``transformer.intermediate_prompt_embeddings.weight`` (``[N, blocks x hidden]``), the names petals uses,
so ``load_state_dict(strict=False)`` puts them into a fresh model of the same mode and N. Its metadata
names the model (DHT prefix, hidden size, blocks), the mode and N. The id is a sha256 over those and the
tensors' bytes: the bench records it, so two runs with different prompts never look alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from petals_ops.client.models import ModelRef
from petals_ops.client.tuned_model import MAX_PRE_SEQ_LEN, MODES, keys_for, open_tunable
from petals_ops.util.errors import InputError
from petals_ops.util.fsutil import why_not_a_file

FORMAT = "petals-ops-prompts/1"
BEST_FILE = "best.safetensors"
LAST_FILE = "prompts.safetensors"


@dataclass(frozen=True)
class TunedPrompts:
    path: str
    mode: str
    pre_seq_len: int
    dht_prefix: str
    hidden_size: int
    num_blocks: int
    step: int
    prompts_id: str
    tensors: dict

    def describe(self) -> dict:
        return {
            "id": self.prompts_id,
            "mode": self.mode,
            "pre_seq_len": self.pre_seq_len,
            "step": self.step,
            "dht_prefix": self.dht_prefix,
            "path": self.path,
        }


def prompts_id(tensors: dict, mode: str, pre_seq_len: int, dht_prefix: str) -> str:
    digest = hashlib.sha256(f"{FORMAT}|{dht_prefix}|{mode}|{pre_seq_len}".encode())
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_prompts(
    path: str | Path, tensors: dict, *, mode: str, ref: ModelRef, hidden_size: int, step: int
) -> str:
    """Write a prompt file atomically (temp file, fsync, rename); returns its id."""
    import os
    import tempfile

    from safetensors.torch import save_file

    n = int(tensors[keys_for(mode)[0]].shape[0])
    pid = prompts_id(tensors, mode, n, ref.dht_prefix)
    meta = {
        "format": FORMAT,
        "mode": mode,
        "pre_seq_len": str(n),
        "dht_prefix": ref.dht_prefix,
        "model": ref.name,
        "hidden_size": str(hidden_size),
        "num_blocks": str(ref.num_blocks),
        "step": str(step),
        "id": pid,
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().float().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pid


def prompt_file_of(where: str | Path) -> Path:
    """``--tuned-prompts``: a tune run dir (its best prompts, else its last) or a prompt file."""
    path = Path(where).expanduser()
    if path.is_dir():
        for name in (BEST_FILE, LAST_FILE):
            if (path / name).is_file():
                return path / name
        raise InputError(
            f"--tuned-prompts {where} holds no {BEST_FILE} or {LAST_FILE}",
            fix="pass the --run-dir of a 'petals-ops tune' run that wrote a checkpoint",
        )
    why = why_not_a_file(path)
    if why is not None:
        raise InputError(f"--tuned-prompts {where} {why}",
                         fix="pass the --run-dir of a 'petals-ops tune' run")
    return path


def load_prompts(where: str | Path) -> TunedPrompts:
    """Read and check a prompt file on its own (tensor names and shapes against its metadata)."""
    from safetensors import safe_open

    path = prompt_file_of(where)
    bad = f"--tuned-prompts {where}"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:
        raise InputError(
            f"{bad} is not a readable prompt file ({type(e).__name__}: {e})",
            fix="pass the run dir of a 'petals-ops tune' run",
        ) from e
    if meta.get("format") != FORMAT or meta.get("mode") not in MODES:
        raise InputError(
            f"{bad} is not a petals-ops prompt file (format {meta.get('format')!r}, mode "
            f"{meta.get('mode')!r})",
            fix="pass the run dir of a 'petals-ops tune' run",
        )
    try:
        n, hidden, blocks, step = (int(meta[k]) for k in ("pre_seq_len", "hidden_size", "num_blocks", "step"))
    except (KeyError, ValueError) as e:
        raise InputError(f"{bad}: its metadata lacks {e}", fix="re-create it with 'petals-ops tune'") from e
    if not (1 <= n <= MAX_PRE_SEQ_LEN and hidden >= 1 and blocks >= 1):
        raise InputError(f"{bad}: its metadata says {n} prompt vectors, hidden size {hidden}, "
                         f"{blocks} blocks",
                         fix=f"use a prompt file of 1 to {MAX_PRE_SEQ_LEN} vectors made by 'petals-ops tune'")
    mode = meta["mode"]
    expected = {keys_for(mode)[0]: (n, hidden)}
    if mode == "deep_ptune":
        expected[keys_for(mode)[1]] = (n, blocks * hidden)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if shapes != expected:
        raise InputError(
            f"{bad} does not hold {mode} prompts of length {n}: tensors {shapes}, expected {expected}",
            fix="re-create it with 'petals-ops tune'",
        )
    for key, tensor in tensors.items():  # NaN or inf would turn every generated token into garbage
        if not tensor.is_floating_point() or not bool(tensor.isfinite().all()):
            raise InputError(f"{bad}: its tensor {key} holds non-finite values (NaN or inf) or is not float",
                             fix="use prompts saved by 'petals-ops tune' (best.safetensors)")
    pid = prompts_id(tensors, mode, n, meta.get("dht_prefix", ""))
    if pid != meta.get("id"):
        raise InputError(
            f"{bad}: its tensors do not match its id {meta.get('id')!r} (modified?)",
            fix="re-create it with 'petals-ops tune'",
        )
    return TunedPrompts(
        str(path.resolve()), mode, n, meta.get("dht_prefix", ""), hidden, blocks, step, pid, tensors
    )


def require_compatible(
    prompts: TunedPrompts, ref: ModelRef, *, mode: str | None = None, pre_seq_len: int | None = None
) -> None:
    """Prompts tuned for another model, mode or length are refused in one line."""
    what = f"--tuned-prompts {prompts.path}"
    if (
        prompts.dht_prefix != ref.dht_prefix
        or (ref.num_blocks is not None and prompts.num_blocks != ref.num_blocks)
        or (ref.hidden_size is not None and prompts.hidden_size != ref.hidden_size)
    ):
        raise InputError(
            f"{what} were tuned for model {prompts.dht_prefix} ({prompts.num_blocks} blocks, hidden "
            f"{prompts.hidden_size}), not {ref.dht_prefix} ({ref.num_blocks} blocks, "
            f"hidden {ref.hidden_size})",
            fix="use prompts tuned on this model, or run 'petals-ops tune' against it",
        )
    if mode is not None and mode != prompts.mode:
        raise InputError(f"{what} are {prompts.mode} prompts, not {mode}", fix=f"use --mode {prompts.mode}")
    if pre_seq_len is not None and pre_seq_len != prompts.pre_seq_len:
        raise InputError(
            f"{what} hold {prompts.pre_seq_len} prompt vectors, not {pre_seq_len}",
            fix=f"use --pre-seq-len {prompts.pre_seq_len}",
        )


def load_into(model, prompts: TunedPrompts) -> None:
    """Copy the tensors into a model opened with the same mode and N (only these keys may be missing)."""
    import torch

    with torch.no_grad():
        _, unexpected = model.load_state_dict(prompts.tensors, strict=False)
    if unexpected:
        raise InputError(
            f"--tuned-prompts {prompts.path}: the model has no {unexpected}", fix="check the mode"
        )


def open_with_prompts(
    kind: str,
    ref: ModelRef,
    initial_peers,
    prompts: TunedPrompts,
    *,
    max_retries: int = 3,
    request_timeout: float = 60.0,
):
    """A :class:`petals_ops.client.loading.LoadedModel` of ``ref`` with ``prompts`` in it (checked
    first)."""
    require_compatible(prompts, ref)
    loaded = open_tunable(
        kind,
        ref,
        initial_peers,
        prompts.mode,
        prompts.pre_seq_len,
        max_retries=max_retries,
        request_timeout=request_timeout,
    )
    try:
        load_into(loaded.model, prompts)
    except BaseException:
        loaded.close()
        raise
    loaded.prompts_id = prompts.prompts_id
    return loaded
