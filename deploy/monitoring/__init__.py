"""Prometheus rules, Grafana provisioning and dashboard, and the metric-name inventory that tests check."""
