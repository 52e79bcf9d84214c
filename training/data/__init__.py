"""Histories in: loading and checking a user's file (or a directory of them), the
time-ordered split, and the feature replay through the server's own engine, in this process
or on a Dask cluster."""
