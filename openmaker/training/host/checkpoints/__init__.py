"""A host's checkpoints: restored before the code starts, synced while it runs, saved at its end."""
