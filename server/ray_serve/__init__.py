"""hotswap as a Ray Serve application: one HTTP ingress (the ordinary FastAPI app) in front of
N engine replicas, adapter requests routed by Ray Serve model multiplexing on `name@version`."""
