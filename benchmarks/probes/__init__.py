"""What a run observes about processes and the machine: CPU and memory of a process tree,
run-queue wait, garbage-collector pauses, the machine and commit a result was taken on."""
