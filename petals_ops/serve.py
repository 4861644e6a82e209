"""Entry point of the processes petals-ops starts: ``python -m petals_ops.serve {dht|server} ARGS...``.

Each process imports petals through :mod:`petals_ops.client.door` first (which repairs hivemind), then
runs petals' own ``main()``. Calling the imported ``main()`` instead of ``runpy``-ing petals' module as
``__main__`` matters: hivemind pickles functions by qualified name across processes and fails on
``__main__``. The same command runs inside the server container of the fleet.
"""

import sys

ENTRY_POINTS = {"dht": "petals.cli.run_dht", "server": "petals.cli.run_server"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENTRY_POINTS:
        sys.exit(f"usage: python -m petals_ops.serve {{{'|'.join(ENTRY_POINTS)}}} [petals options...]")
    import importlib

    from petals_ops.client import door as petals_door  # noqa: F401  (repairs hivemind before petals loads)

    module = importlib.import_module(ENTRY_POINTS[argv[0]])
    sys.argv = [f"petals-ops-{argv[0]}"] + argv[1:]
    module.main()


if __name__ == "__main__":
    main()
