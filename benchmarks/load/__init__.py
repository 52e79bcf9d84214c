"""The load client: traffic, schedules, the client processes, streams and their tallies."""
