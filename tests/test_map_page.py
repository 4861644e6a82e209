"""The exporter's swarm map: ``/map.json`` as a pure function of the state, and the page ``/`` in a real
headless Chromium (tests/fixtures_browser.py) against a real local swarm.

Screenshots of each state are saved as artefacts: in ``--artefacts DIR`` when given, else in pytest's temp
dir (``browser-artefacts*`` under the session's basetemp, e.g. /tmp/pytest-of-root/pytest-N/); each test
prints the paths it wrote. Files: ``synthetic-1-hostile.png``, ``synthetic-2-redrawn.png``,
``swarm-1-healthy.png``, ``swarm-2-server-killed.png``.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from petals_ops.lab import local_swarm as ls
from petals_ops.util import procs
from petals_ops.monitoring.map_state import MapBody, map_json, map_state
from petals_ops.monitoring.refresher import ExporterState
from petals_ops.monitoring.server import start_exporter
from petals_ops.swarm.health import BlockHealth, ServerRecord, SwarmSnapshot
from tests.test_exporter import snapshot as exporter_snapshot

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"><b>bold</b>'
# Evaluated in the page: has anything a server announced run or become markup?
NOT_INJECTED = ("window.__pwned === undefined && document.querySelectorAll('#models img, #models script, "
                "#models b').length === 0 && document.scripts.length === 1")


def snapshot(taken_at: float, name: str | None = "a10-1") -> SwarmSnapshot:
    """test_exporter's snapshot (QmA ONLINE 0:2, QmB OFFLINE 2:4, QmC JOINING 1:3) with hostile
    announcements."""
    base = exporter_snapshot(taken_at)
    a, b, c = base.servers
    hostile_b = replace(b, throughput=math.nan, version=HOSTILE, torch_dtype=HOSTILE, quant_type=HOSTILE)
    return replace(base, model="bigscience/m", servers=[replace(a, public_name=name), hostile_b, c])


def state_of(*snaps: SwarmSnapshot, **kw) -> ExporterState:
    return ExporterState(refresh_interval=1, snapshots=snaps, own_hosts={"QmA": "a10-1"}, up=True,
                         refreshes=1, **kw)


# ------------------------------------------------------------------------------------------ the JSON
def test_map_json_is_a_pure_function_of_the_state():
    state = state_of(snapshot(1000.0, name=HOSTILE))
    data = map_json(state, now=1012.0)
    assert data == map_json(state, now=1012.0)
    assert data["snapshot_age_seconds"] == 12.0 and data["now"] == 1012.0
    (m,) = data["models"]
    assert m["dht_prefix"] == "m-petals" and m["num_blocks"] == 4
    assert m["uncovered_blocks"] == [2, 3] and m["online_per_block"] == [1, 1, 0, 0] and not m["fully_served"]
    rows = {s["peer_id"]: s for s in m["servers"]}
    assert [s["peer_id"] for s in m["servers"]] == ["QmA", "QmC", "QmB"]  # start-block order, as the snapshot
    assert (rows["QmA"]["cells"] == "OO.." and rows["QmC"]["cells"] == ".JJ."
            and rows["QmB"]["cells"] == "..FF")
    assert rows["QmA"]["ours"] == "a10-1" and rows["QmB"]["ours"] is None
    assert rows["QmA"]["public_name"] == HOSTILE  # data, verbatim: escaping is the page's job
    assert rows["QmB"]["throughput"] is None  # NaN announced: strict JSON has no NaN
    assert data["exporter"]["inventory"] is False
    assert map_json(replace(state, containers=()), 0)["exporter"]["inventory"] is True
    assert map_json(ExporterState(refresh_interval=30), 5.0)["snapshot_age_seconds"] is None


def test_map_body_encodes_once_per_state_and_equals_map_json():
    state = state_of(snapshot(1000.0))
    holder = {"state": state}
    body = MapBody(lambda: holder["state"])
    first = body(now=1010.0)
    assert json.loads(first) == json.loads(json.dumps(map_json(state, 1010.0)))  # NaN -> null on both sides
    cached = body._cached
    body(now=1011.0)
    assert body._cached is cached  # same state: the bulk is not encoded again
    holder["state"] = state_of(snapshot(1020.0))
    assert json.loads(body(now=1021.0))["models"][0]["taken_at"] == 1020.0
    assert map_state(state) == map_state(state)


def test_bodies_are_encoded_before_a_state_is_published():
    """The refresher hands each new state to the HTTP bodies before publishing it: no request encodes."""
    from petals_ops.client.models import ModelRef
    from petals_ops.monitoring.refresher import Refresher

    refresher = Refresher(["/ip4/127.0.0.1/tcp/9/p2p/QmXnTFvGexkbhYVWAP95ZsSKJCG5j2xAi4vktJyRsfhnJY"],
                          [ModelRef("m", "m-petals", 4)], interval=30)
    refresher._walk_swarm = lambda: [snapshot(time.time())]  # no swarm here: the walk's result stands in
    body = MapBody(lambda: refresher.state)
    seen = []
    refresher.before_publish.extend([lambda st: seen.append(st is refresher.state), body.prepare,
                                     lambda st: 1 / 0])  # a failing callback is logged, not fatal
    state = refresher.refresh_once()
    assert seen == [False] and body._cached[0] is state
    cached = body._cached
    assert json.loads(body())["models"][0]["num_blocks"] == 4 and body._cached is cached


# ------------------------------------------------------------------------------ the page, no swarm
class StateHolder:
    """Stands in for the refresher (no DHT walk): the page test sets the state the exporter serves."""

    def __init__(self, state: ExporterState):
        self.state = state
        self.before_publish = []

    def start(self):
        return self

    def stop(self, timeout: float = 0):
        pass


@pytest.fixture
def static_exporter():
    holder = StateHolder(state_of(snapshot(time.time() - 3, name=HOSTILE)))
    exporter = start_exporter(holder, "127.0.0.1:0", process_metrics=False)
    try:
        yield holder, "http://{}:{}".format(*exporter.address)
    finally:
        exporter.close()


def test_routes(static_exporter):
    _, url = static_exporter
    with urllib.request.urlopen(url + "/") as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    # nothing loaded from elsewhere
    assert "map.json" in page and "http://" not in page and "https://" not in page
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page
    with urllib.request.urlopen(url + "/map.json") as r:
        assert (r.headers["Content-Type"] == "application/json"
                and json.load(r)["models"][0]["num_blocks"] == 4)
    with urllib.request.urlopen(url + "/metrics") as r:
        assert b"petals_model_uncovered_blocks" in r.read()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/nope")
    assert e.value.code == 404


def test_page_escapes_announced_strings_and_redraws(static_exporter, browser, artefacts_dir):
    holder, url = static_exporter
    page = browser.page()
    page.navigate(url + "/")
    page.wait_for("document.querySelectorAll('#models tr.srv').length === 3", 20, "3 server rows")
    assert page.eval("document.querySelector('tr[data-peer=QmA] .name').textContent") == HOSTILE
    assert page.eval("document.querySelector('tr[data-peer=QmB]').textContent").count(HOSTILE) == 3
    assert page.eval(NOT_INJECTED)
    assert page.eval("[...document.querySelectorAll('td.cov')]"
                     ".map(td => td.dataset.online).join()") == "1,1,0,0"
    assert page.eval("[...document.querySelectorAll('td.cov.uncovered')]"
                     ".map(td => td.dataset.block).join()") == "2,3"
    assert "2:4" in page.eval("document.querySelector('.uncovered-summary').textContent")
    assert page.eval("document.querySelector('tr[data-peer=QmA]').dataset.ours") == "a10-1"
    assert "Snapshot age:" in page.eval("document.getElementById('status').textContent")
    shots = [page.screenshot(artefacts_dir / "synthetic-1-hostile.png")]

    # A new state (block 2 covered by a new server): the page redraws in place, no reload.
    mark = uuid.uuid4().hex
    page.eval(f"window.__mark = '{mark}'")
    snap = snapshot(time.time())
    extra = ServerRecord("QmD", "ONLINE", 2, 3, 1.0, public_name="new-one")
    blocks = [*snap.blocks[:2], BlockHealth(2, "m-petals.2", {**snap.blocks[2].servers, "QmD": "ONLINE"}),
              snap.blocks[3]]
    holder.state = replace(holder.state,
                           snapshots=(replace(snap, servers=[*snap.servers, extra], blocks=blocks),),
                           refreshes=2)
    page.wait_for("document.querySelectorAll('#models tr.srv').length === 4", 20, "the new server's row")
    assert page.eval("[...document.querySelectorAll('td.cov.uncovered')]"
                     ".map(td => td.dataset.block).join()") == "3"
    assert page.eval("window.__mark") == mark
    shots.append(page.screenshot(artefacts_dir / "synthetic-2-redrawn.png"))
    print("screenshots:", *shots)


# --------------------------------------------------------------------------- the page, a real swarm
@pytest.fixture(scope="module")
def map_swarm(swarm_factory, tmp_path_factory):
    """A swarm of our own (0:2, 2:4) plus a third server on 0:2 announcing a hostile public_name, and a real
    ``petals-ops exporter`` process on it (refresh 1 s). The test kills a server of it."""
    from petals_ops.lab.prometheus_lab import ExporterProcess

    swarm = swarm_factory()
    identity = Path(swarm.run_dir) / "hostile.id"
    cmd = [*ls.server_command(swarm.model, swarm.initial_peers, (0, 2), identity), "--public_name", HOSTILE]
    # recorded in the swarm's state: teardown stops it
    ls._launch(swarm, "hostile", "server", cmd, blocks="0:2")
    ls.wait_until_served(swarm, 3, timeout=180)
    exporter = ExporterProcess(["--swarm-dir", swarm.run_dir, "--refresh", "1s"],
                               tmp_path_factory.mktemp("map-exporter") / "exporter.log")
    try:
        exporter.wait_up()
        yield swarm, exporter
    finally:
        exporter.stop()


@pytest.mark.swarm
def test_live_page_on_a_real_swarm(map_swarm, browser, artefacts_dir):
    """Every block covered; a hostile public_name shown as text; a killed server's blocks turn uncovered
    on the page without a reload."""
    swarm, exporter = map_swarm
    page = browser.page()
    page.navigate(f"http://{exporter.address}/")
    section = f"section[data-model='{swarm.dht_prefix}']"
    page.wait_for(f"document.querySelectorAll(\"{section} tr.srv[data-state=ONLINE]\").length === 3", 60,
                  "3 ONLINE servers on the page")
    online = page.eval(f"[...document.querySelectorAll(\"{section} td.cov\")].map(td => +td.dataset.online)")
    assert len(online) == swarm.num_blocks and min(online) >= 1, online
    assert page.eval(f"document.querySelectorAll(\"{section} td.cov.uncovered\").length") == 0
    names = page.eval(f"[...document.querySelectorAll(\"{section} tr.srv .name\")].map(e => e.textContent)")
    assert HOSTILE in names
    assert page.eval(NOT_INJECTED)
    ours = page.eval(f"[...document.querySelectorAll(\"{section} tr.srv\")].map(tr => tr.dataset.ours || '')")
    assert {"local/server-0", "local/server-1", "local/hostile"} == set(ours), ours
    shots = [page.screenshot(artefacts_dir / "swarm-1-healthy.png")]

    mark = uuid.uuid4().hex
    page.eval(f"window.__mark = '{mark}'")
    victim = swarm.process("server-1")
    lo, hi = map(int, victim.blocks.split(":"))
    assert procs.stop_group(victim.pgid)  # SIGTERM: it announces itself OFFLINE as it leaves
    uncovered = ",".join(str(b) for b in range(lo, hi))
    page.wait_for(f"[...document.querySelectorAll(\"{section} td.cov.uncovered\")]"
                  f".map(td => td.dataset.block).join() === '{uncovered}'", 60,
                  f"blocks {lo}:{hi} uncovered on the page")
    assert f"{lo}:{hi}" in page.eval(f"document.querySelector(\"{section} .uncovered-summary\").textContent")
    assert page.eval("window.__mark") == mark  # the same document: redrawn in place, not reloaded
    assert page.eval(NOT_INJECTED)
    shots.append(page.screenshot(artefacts_dir / "swarm-2-server-killed.png"))
    print("screenshots:", *shots)
