"""The one door to petals and everything a client of the swarm needs: model references,
loading, backends, the token loop, tuned-prompt models."""
