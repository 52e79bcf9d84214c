"""The gRPC adapter: the servicer, the converters, callers and roles, the interceptors, the
server, the admin RPC and the Python client; the only package that imports the generated
protobuf modules (`_proto/`, made by scripts/generate-proto). Imports the layers beneath
it, never the reverse.
"""
