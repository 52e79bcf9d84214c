"""Runs under faults and at length: fuzzing, reloads, chaos and soak, each judged by criteria."""
