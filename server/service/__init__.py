"""Use cases: the service layer between the gRPC adapters and the engine + storage."""
