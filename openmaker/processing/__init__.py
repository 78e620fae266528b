"""Processing jobs (CreateProcessingJob): a container run on one or more hosts over S3 inputs,
its output folders uploaded to S3. They run on the training host's machinery (one
`TrainingHost` per instance) with a plan of their own (plan.py)."""
