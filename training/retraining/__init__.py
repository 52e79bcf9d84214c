"""Closing the loop: reading the server's records, labelling them as of a moment, the
retrain, its triggers, the watch loop and the promotion policy."""
