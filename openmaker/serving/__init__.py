"""Real-time endpoints: models, endpoint configurations, endpoints and their instances (`serve`
containers on the runtime, each in a network namespace of its own), and the invocation proxy."""
