"""Generated protobuf and gRPC stubs for relay.v1 (``make gen``); never edited by hand."""
