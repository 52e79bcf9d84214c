"""`fraud-train`: the argument parser and one handler module per command group."""
