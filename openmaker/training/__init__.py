"""The TrainingJob resource: its requests, statuses, state machine, service, and the worker that
runs a job's hosts (`training/host/`, reached only through `TrainingHost`)."""
