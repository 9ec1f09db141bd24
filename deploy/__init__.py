"""How Triton starts: locally from the PyPI wheel (`deploy.local`), or in production (compose, Kubernetes, KServe)."""
