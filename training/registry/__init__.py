"""The write side of the model registry: publishing, aliases, history, crash-safe files."""
