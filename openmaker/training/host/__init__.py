"""One training host on its machine. Its only door is `training_host.TrainingHost`; it reports
through `events` and never touches the database."""
