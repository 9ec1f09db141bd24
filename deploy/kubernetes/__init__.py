"""Kubernetes manifests (kustomize base, components, overlays) and the offline renderer used to validate them."""
