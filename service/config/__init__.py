"""The settings of `fraud-serve` (one pydantic-settings model) and the layering that loads
them (environment over a TOML file over defaults), shared with `fraud-train`'s settings.
"""
