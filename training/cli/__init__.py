"""`fraud-train`: the entry point (`main`), the argument parser, one handler module per
command group, and the options and console output they share."""
