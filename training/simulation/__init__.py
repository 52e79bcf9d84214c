"""The seeded transaction simulator and the history files it writes."""
