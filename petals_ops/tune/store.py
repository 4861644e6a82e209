"""A tune run directory: ``config.json`` (the run's identity), ``checkpoint.pt`` (the state a resume starts
from), and what a user reads: ``prompts.safetensors`` (last), ``best.safetensors`` (lowest held-out loss),
``tune.json`` and ``loss.png``.

Every file is written whole (temp file, fsync, rename): a crash or kill -9 leaves the previous checkpoint
intact and loses at most the steps since it. The config check and the pid lock are the bench's
(:class:`petals_ops.bench.store.RunStore`): a run dir with another config is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from petals_ops.bench.store import RunStore
from petals_ops.util.errors import InputError
from petals_ops.util.fsutil import write_json_atomic
from petals_ops.tune.summary import TuneSummary

CHECKPOINT_FILE = "checkpoint.pt"
TUNE_FILE = "tune.json"
PLOT_FILE = "loss.png"


# What the training loop reads from a checkpoint (tune.trainer._Loop), with its type.
CHECKPOINT_FIELDS = {"step": int, "history": dict, "best": dict, "prompts": dict, "optimizer": dict}
HISTORY_FIELDS = {"losses": list, "evals": list, "forward_s": (int, float), "backward_s": (int, float),
                  "optimizer_s": (int, float), "tokens": int, "padded_tokens": int, "train_s": (int, float),
                  "retries": int, "failures": list, "resumed_at": list, "servers": list}


def checkpoint_problem(state: Any) -> str | None:
    """What makes ``state`` unusable as a checkpoint to resume from, or None. (A bare ``{"step": 5}``
    once resumed with fresh prompts under "resuming at step 5".) The prompts' shapes are checked against
    the model when it is open (tune.trainer)."""
    import torch

    if not isinstance(state, dict):
        return "not a mapping"
    for fields, where in ((CHECKPOINT_FIELDS, state), (HISTORY_FIELDS, state.get("history"))):
        if not isinstance(where, dict):
            return "no history"
        for name, kind in fields.items():
            if name not in where:
                return f"it lacks {name}"
            if not isinstance(where[name], kind) or isinstance(where[name], bool):
                return f"its {name} is {type(where[name]).__name__}"
    if state["step"] < 0 or not state["prompts"]:
        return "no step or no prompts"
    for key, value in state["prompts"].items():
        tensor = isinstance(value, torch.Tensor) and value.is_floating_point()
        finite = tensor and bool(value.isfinite().all())
        if not finite:
            return f"its prompts {key} are not a finite float tensor"
    return None


class TuneStore(RunStore):
    job = "tune run"

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_FILE

    def open(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Create or reopen the run dir for ``config``; return the last checkpoint, or None."""
        self.open_dir(config, started=self.checkpoint_path)
        try:
            return self._read_checkpoint()
        except BaseException:
            self.close()
            raise

    def _read_checkpoint(self) -> dict[str, Any] | None:
        import torch

        if not self.checkpoint_path.is_file():
            return None
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(
                f"--run-dir {self.run_dir}: {CHECKPOINT_FILE} is unreadable ({type(e).__name__})",
                fix=f"remove {self.checkpoint_path} to start over, or use a new --run-dir",
            ) from e
        problem = checkpoint_problem(state)
        if problem:
            raise InputError(
                f"--run-dir {self.run_dir}: {CHECKPOINT_FILE} is not a tune checkpoint ({problem})",
                fix=f"remove {self.checkpoint_path} to start over, or use a new --run-dir",
            )
        return state

    def write_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.checkpoint_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_summary(self, summary: TuneSummary) -> None:
        write_json_atomic(self.run_dir / TUNE_FILE, summary.to_dict())

    def write_plot(self, losses: list[float], evals: list[dict[str, Any]], title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(range(1, len(losses) + 1), losses, label="training loss (batch)", alpha=0.7)
        if evals:
            ax.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="held-out loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (answer tokens)")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        path = self.run_dir / PLOT_FILE
        fd, tmp = tempfile.mkstemp(dir=self.run_dir, prefix=f".{PLOT_FILE}.", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=80)
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def load_tune_summary(run_dir: str | Path) -> TuneSummary:
    """A tune run dir's ``tune.json``, typed; a one-line error for anything else."""
    path = Path(run_dir) / TUNE_FILE
    try:
        return TuneSummary.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{run_dir} has no {TUNE_FILE}",
                         fix="pass a run dir made by 'petals-ops tune'") from None
    except (OSError, ValueError, TypeError, RecursionError) as e:
        raise InputError(f"{path} is not a tune summary ({e})",
                         fix="run the same tune command to rewrite it") from None
