"""Propositions: the HTTP service that ranks actions for an alert, and the worker's client for it."""
