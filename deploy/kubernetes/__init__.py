"""Kubernetes manifests: kustomize base, components and overlays (render with `kubectl kustomize <overlay>`)."""
