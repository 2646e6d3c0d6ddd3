"""gRPC servers and clients, the generated stubs, and the mapping of errors onto status codes."""
