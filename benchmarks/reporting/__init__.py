"""What a run leaves: the report (JSON and table) and its charts."""
