"""Each measurement the harness makes: load runs, saturation, memory, reloads, floors."""
