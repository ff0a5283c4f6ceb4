"""gRPC API: the same domain calls as the HTTP API, over `hotswap.v1` (see proto/)."""
