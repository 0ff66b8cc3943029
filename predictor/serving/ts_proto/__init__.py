"""Stubs of TorchServe's gRPC inference API, generated from its inference.proto by generate.sh."""
