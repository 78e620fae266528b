"""The SageMaker API's shapes: requests checked against the botocore model, ARNs, names.

Import from the modules themselves: this package imports nothing, so that a module that needs
one small part (a worker: the distribution hyperparameters) does not load botocore's model.
"""
