"""The swarm view: one frozen snapshot of the DHT, and the block map drawn from it."""
