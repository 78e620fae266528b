"""The HTTP surface: the SageMaker JSON protocol, the CloudWatch Logs subset, SigV4 auth."""
