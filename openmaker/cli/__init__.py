"""The `openmaker` command: in-process, or through a running server with boto3."""
