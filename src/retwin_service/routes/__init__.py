"""The HTTP routes, thin: check, call the service, shape the answer."""
