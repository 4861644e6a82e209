"""The remediation planner: a pure function of the readings so far, the journal's state and the policy.

Rules (docs/fleet.md, "watch"):

- a server's verdict per reading is ok (running and ONLINE), bad (exited, missing, restarting, unreachable
  by the probe, or running but OFFLINE/absent in the DHT: a zombie) or unknown (its host could not be read,
  the swarm could not be read or looks down for most of our servers at once, or it is JOINING or started
  less than ``startup_grace`` ago and not ONLINE yet). Unknown is
  never dead: it breaks a streak of bad readings and never leads to an action;
- ``bad_readings`` consecutive bad readings (after the server's last action) -> the next step of its
  ladder: restart (same container, same peer id) ``restarts_before_recreate`` times, then recreate
  ``recreates_before_give_up`` times, then give up (an alert; a human's turn). A missing container is
  recreated at once. Healthy for ``healthy_reset`` s after an action: the ladder (and a give-up) resets;
- a range of ours uncovered in the DHT for ``bad_readings`` readings while its host is unknown (gone) or
  given up -> the range is started on a spare host with a free slot; given back once its owner has been
  healthy for ``give_back_after`` s;
- limits: exponential backoff between a server's attempts, at most ``max_per_server_per_hour`` actions
  per server per hour, at most ``max_actions_per_pass`` actions per pass; what they hold back is returned
  as ``hold`` remediations (reported, counted in the metrics, never applied);
- containers petals-ops did not make for that host are never acted on.
"""

from __future__ import annotations

from typing import Sequence

from petals_ops.fleet.watch.model import Policy, Reading, Remediation, WatchState

OK, BAD, UNKNOWN = "ok", "bad", "unknown"


def dht_trusted(reading: Reading, policy: Policy) -> bool:
    """Whether the DHT part of ``reading`` can be acted on: it was read, and it does not show most of our
    running servers gone or unreachable at once (that is the swarm's DHT failing, or our view of it, not
    our servers)."""
    if reading.dht_error is not None:
        return False
    running = [s for s in reading.servers() if s.state == "running" and s.dht is not None]
    gone = [s for s in running if s.dht not in ("ONLINE", "JOINING") or s.reachable is False]
    return not (len(running) >= 2 and len(gone) > policy.dht_distrust_fraction * len(running))


def verdicts(reading: Reading, policy: Policy) -> dict[str, tuple[str, str]]:
    """key -> (ok | bad | unknown, why) for every server of ours the reading names."""
    trusted = dht_trusted(reading, policy)
    out: dict[str, tuple[str, str]] = {}
    for host in reading.hosts:
        for s in host.servers:
            if not s.managed:
                continue
            if not host.known:
                out[s.key] = (UNKNOWN, f"host not read ({host.error})")
            elif s.state == "missing":
                out[s.key] = (BAD, "container missing")
            elif s.state != "running":
                out[s.key] = (BAD, f"container {s.state}")
            elif s.dht is None or not trusted:
                out[s.key] = (UNKNOWN, "swarm not read" if s.dht is None or reading.dht_error
                              else "most of our servers look gone at once (our view of the swarm?)")
            elif s.reachable is False:
                out[s.key] = (BAD, f"{s.dht} in the DHT but does not answer (reachability probe)")
            elif s.dht == "ONLINE":
                out[s.key] = (OK, "ONLINE")
            elif s.dht == "JOINING":
                out[s.key] = (UNKNOWN, "JOINING")
            elif s.started_at is not None and reading.at - s.started_at < policy.startup_grace:
                out[s.key] = (UNKNOWN, f"starting ({s.dht} in the DHT, started "
                                       f"{reading.at - s.started_at:.0f} s ago)")
            else:
                out[s.key] = (BAD, f"zombie: container running, {s.dht} in the DHT")
    return out


def _verdict(reading: Reading, vs: dict, key: str) -> tuple[str, str]:
    if key in vs:
        return vs[key]
    host = reading.host(key.split("/", 1)[0])
    return (UNKNOWN, f"host not read ({host.error})" if host is not None and not host.known else "not seen")


def bad_streak(history: Sequence[Reading], vs: Sequence[dict], key: str, after: float) -> int:
    """Consecutive bad readings of ``key`` at the end of the history, taken after ``after``."""
    n = 0
    for reading, v in zip(reversed(history), reversed(vs)):
        if reading.at <= after or _verdict(reading, v, key)[0] != BAD:
            break
        n += 1
    return n


def healthy_for(history: Sequence[Reading], vs: Sequence[dict], key: str, after: float) -> float:
    """Seconds ``key`` has been ok in every reading since the first ok one after ``after`` (0: not ok now)."""
    since = None
    for reading, v in zip(reversed(history), reversed(vs)):
        if reading.at <= after or _verdict(reading, v, key)[0] != OK:
            break
        since = reading.at
    return 0.0 if since is None else history[-1].at - since


def _overlaps(blocks: str, uncovered: Sequence[int]) -> bool:
    start, end = map(int, blocks.split(":"))
    return any(start <= b < end for b in uncovered)


def plan_remediations(history: Sequence[Reading], state: WatchState, policy: Policy,
                      now: float) -> list[Remediation]:
    """The remediations for the latest reading (``history[-1]``): bookkeeping first (reset, give_up), then
    the actions in the order they are to be applied, then what the limits hold back (``hold``)."""
    if not history:
        return []
    latest = history[-1]
    vs = [verdicts(r, policy) for r in history]
    book: list[Remediation] = []
    acts: list[Remediation] = []
    holds: list[Remediation] = []
    budget = policy.max_actions_per_pass

    def limited(key: str) -> str | None:
        """Why an action on ``key`` must wait now (backoff, hourly limit, the pass's cap), else None."""
        st = state.servers.get(key)
        if st is not None and st.attempts:
            until = st.attempts[-1][0] + policy.backoff(len(st.attempts))
            if now < until:
                return f"backoff: attempt {len(st.attempts) + 1} not before {until - now:.0f} s from now"
        recent = [t for t in (st.actions if st else []) if t > now - 3600]
        if len(recent) >= policy.max_per_server_per_hour:
            return (f"rate limit: {len(recent)} actions in the last hour "
                    f"(max {policy.max_per_server_per_hour})")
        if budget <= 0:
            return f"global cap: {policy.max_actions_per_pass} actions per pass"
        return None

    # 1. ladders that healed: reset (and a give-up a human has since repaired)
    for key, st in sorted(state.servers.items()):
        if not (st.attempts or st.given_up):
            continue
        last = st.attempts[-1][0] if st.attempts else 0.0
        if healthy_for(history, vs, key, last) >= policy.healthy_reset:
            book.append(Remediation("reset", key, f"healthy for {policy.healthy_reset:.0f} s"))
    reset = {r.key for r in book}

    # 2. our servers, bad for K readings: the next step of their ladder
    for host in latest.hosts:
        if not host.known:
            continue
        for s in host.servers:
            key = s.key
            if not s.managed or key in reset:
                continue
            verdict, why = vs[-1].get(key, (UNKNOWN, ""))
            st = state.servers.get(key)
            if verdict != BAD:
                continue
            last = st.attempts[-1][0] if st and st.attempts else float("-inf")
            streak = bad_streak(history, vs, key, last)
            if streak < policy.bad_readings:
                continue
            why = f"{why} ({streak} readings)"
            if st is not None and st.given_up:
                holds.append(Remediation("hold", key, f"given up, left to a human: {why}", s.host,
                                         s.container))
                continue
            restarts = sum(1 for _, k in (st.attempts if st else []) if k == "restart")
            recreates = sum(1 for _, k in (st.attempts if st else []) if k == "recreate")
            if s.state != "missing" and restarts < policy.restarts_before_recreate:
                kind = "restart"
            elif recreates < policy.recreates_before_give_up:
                kind = "recreate"
            else:
                book.append(Remediation("give_up", key, f"still bad after {restarts} restart(s) and "
                                        f"{recreates} recreate(s): {why}", s.host, s.container))
                continue
            held = limited(key)
            if held:
                holds.append(Remediation("hold", key, f"{kind} held back ({held}): {why}", s.host,
                                         s.container))
                continue
            acts.append(Remediation(kind, key, why, s.host, s.container, s.blocks))
            budget -= 1

    # 3. spares: ranges of ours whose host is gone (or given up), and spares whose owner is back
    given_up = {k for k, st in state.servers.items() if st.given_up} | {r.key for r in book
                                                                         if r.kind == "give_up"}
    taken: dict[str, int] = {}
    for owner, blocks in latest.ranges:
        holding = state.spares.get(owner)
        owner_host = latest.host(owner.split("/", 1)[0])
        if holding is not None:
            healthy = healthy_for(history, vs, owner, holding.since)
            if healthy >= policy.give_back_after:
                if budget > 0:
                    acts.append(Remediation("give_back", owner, f"{owner} healthy for {healthy:.0f} s",
                                            holding.host, holding.container, holding.blocks))
                    budget -= 1
                else:
                    holds.append(Remediation("hold", owner, "give_back held back (global cap)",
                                             holding.host, holding.container, holding.blocks))
            continue
        gone = owner_host is None or not owner_host.known
        if not (gone or owner in given_up):
            continue
        recent = history[-policy.bad_readings:]
        if len(recent) < policy.bad_readings or any(
                r.dht_error is not None or not _overlaps(blocks, r.uncovered)
                or _verdict(r, v, owner)[0] == OK
                for r, v in zip(recent, vs[-policy.bad_readings:])):
            continue
        why = (f"blocks {blocks} uncovered for {policy.bad_readings} readings, "
               + ("its host not read" if gone else "its server given up"))
        spare = next((h for h in latest.hosts if h.spare and h.known
                      and h.capacity - len(h.servers) - taken.get(h.host, 0) > 0), None)
        if spare is None:
            holds.append(Remediation("hold", owner, f"take_spare: no spare host with a free slot; {why}",
                                     blocks=blocks))
            continue
        held = limited(owner)
        if held:
            holds.append(Remediation("hold", owner, f"take_spare held back ({held}); {why}", spare.host,
                                     blocks=blocks))
            continue
        taken[spare.host] = taken.get(spare.host, 0) + 1
        acts.append(Remediation("take_spare", owner, why, spare.host, None, blocks))
        budget -= 1
    return book + acts + holds
