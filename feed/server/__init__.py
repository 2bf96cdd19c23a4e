"""Running the service: worker processes, the service, the demo."""
