"""pushsvc: a push microservice — gRPC in, WebSocket out, stored until acknowledged."""

__version__ = "0.1.0"
