"""SageMaker's framework serving images (scikit-learn, PyTorch, XGBoost, Hugging Face), stood
in for on this machine's Python.

standin.py (the endpoint's worker) fetches a submit directory kept in S3 and makes the
instance's container; inside it, server.py answers /ping, /invocations and
/execution-parameters on 8080 with the handler semantics of SageMaker's inference toolkits:
handlers.py loads the user's module (model_fn, input_fn, predict_fn, output_fn or
transform_fn), defaults.py gives each framework's default handlers, codecs.py the default
content types.

Kept free of imports: the container imports this package with its own Python.
"""
