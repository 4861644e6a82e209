"""Bench methods: a sampling policy (how many paths a question gets, decided as its answers come in) and
an aggregation (the question's answer from its paths), plus the figures each reports.

A method is one module that subclasses :class:`Method` and calls :func:`register` (cot.py, sc.py; the
import below makes the shipped ones available). The runner, store, summary, report and CLI never branch
on a method's name: they ask the method, and render its figures by their descriptions. docs/bench.md
("Adding a method") walks through one, with tests/test_bench_methods.py as the worked example.
"""

from petals_ops.bench.methods.base import METHODS, Method, MethodConfig, Parameter, get_method, register
from petals_ops.bench.methods import cot, multi_answer, sc  # noqa: E402, F401  (registration)
# the adaptive ones after: METHODS lists cot first (help, error messages)
from petals_ops.bench.methods import adaptive, esc  # noqa: E402, F401, I001

__all__ = ["METHODS", "Method", "MethodConfig", "Parameter", "get_method", "register"]
