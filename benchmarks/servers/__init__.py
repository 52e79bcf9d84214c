"""The servers the harness starts: `fraud-serve` and the floor servers."""
