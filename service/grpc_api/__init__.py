"""The gRPC adapter: the only package that imports the generated protobuf modules."""
