"""Generated protobuf/gRPC code (regenerate with ``python -m serving.gen_proto``; do not edit the *_pb2* files)."""
