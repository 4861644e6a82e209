"""``petals-ops watch``: a reconcile loop over the fleet (observe -> diff -> act), level-triggered and
rate-limited, with hot spares.

- :mod:`.model`: what one pass reads (per host its servers, or "unknown"; the swarm's coverage) as plain data;
- :mod:`.planner`: the remediations, a pure function of the readings, the journal's state and the policy;
- :mod:`.journal`: the append-only record of readings that led to actions and of every action's outcome,
  replayed at start (rate limits, backoff, spares, nothing done twice);
- :mod:`.observe`: one reading of the fleet (SSH + Docker) and the swarm (DHT);
- :mod:`.act`: the remediations applied through the fleet executor;
- :mod:`.loop`: the loop itself, its lock and its metrics.
"""
