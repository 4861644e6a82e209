"""The local lab: a swarm on loopback, tiny models made offline, synthetic arithmetic data."""
