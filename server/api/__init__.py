"""gRPC adapters: servicers, conversion, status mapping, the interceptor."""
