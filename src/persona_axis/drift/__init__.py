"""Drift: conversation readers, per-turn monitoring with alarms, and simulated conversations."""
