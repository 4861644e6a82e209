"""Chain-of-Thought: one greedy path; its answer is the question's answer."""

from petals_ops.bench.methods.base import Method, register
from petals_ops.util.errors import InputError


class ChainOfThought(Method):
    name = "cot"
    help = "one greedy path"

    def validate(self, cfg) -> None:
        if cfg.paths != 1:
            raise InputError(f"--paths {cfg.paths} needs --method sc (cot is one greedy path)",
                             fix="drop --paths or use --method sc")


register(ChainOfThought())
