"""The Grafana dashboard is built in code (monitoring/dashboard.py, Grafana's own SDK): the checked-in JSON
must be exactly what the code builds, so nobody edits one and forgets the other."""

from __future__ import annotations

import importlib.util

from petals_ops.lab.prometheus_lab import MONITORING


def _builder():
    spec = importlib.util.spec_from_file_location("petals_dashboard", MONITORING / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_dashboard_is_what_the_code_builds():
    builder = _builder()
    assert builder.OUTPUT.read_text() == builder.render(), (
        "monitoring/grafana/dashboards/petals-swarm.json differs from monitoring/dashboard.py: "
        "run '.venv/bin/python monitoring/dashboard.py' and commit the JSON")
    board = builder.build()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"]) for p in panels]
    for i, (x, y, w, h) in enumerate(boxes):  # the layout: inside 24 columns, no two panels overlap
        assert 0 <= x and x + w <= 24
        for x2, y2, w2, h2 in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, (boxes[i], (x2, y2, w2, h2))
    titles = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert {"Model coverage", "Servers", "Exporter", "GPUs (our hosts)"} <= titles
    assert any(t.startswith("Canary") for t in titles)
