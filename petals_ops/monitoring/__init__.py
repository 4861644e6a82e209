"""Swarm health monitoring: the ``petals-ops exporter`` (a Prometheus exporter) and its parts.

- :mod:`.refresher`: a background thread that walks the DHT every refresh period through one
  long-lived :class:`~petals_ops.swarm.health.SwarmProbe` (recreated after a failure) and, with an
  inventory, reads our containers' status; it publishes an immutable :class:`~.refresher.ExporterState`.
- :mod:`.collector`: a prometheus-client custom collector that renders the latest state on each scrape
  (cheap: no DHT access during a scrape).
- :mod:`.server`: the HTTP server, option parsing and the run loop with graceful SIGTERM/SIGINT.

Nothing here imports petals or hivemind at module level; the refresher does, through the door, once it runs.
"""
