"""Bench methods: how a question's paths are decoded and how they aggregate into one answer.

A method is one module that builds a :class:`Method` and registers it (one line below). The runner,
store, summary and report never branch on a method's name: they ask the method.
"""

from petals_ops.bench.methods.base import METHODS, Method, MethodConfig, get_method, register
from petals_ops.bench.methods import cot, sc  # noqa: E402, F401  (registration)

__all__ = ["METHODS", "Method", "MethodConfig", "get_method", "register"]
