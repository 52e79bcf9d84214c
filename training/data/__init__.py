"""Histories in: loading and checking a user's file, the time-ordered split, and the
feature replay through the server's own engine."""
