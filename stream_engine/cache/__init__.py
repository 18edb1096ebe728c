"""Proposition cache tiers: a partition-local LRU with TTL, then Redis shared by all workers."""
