"""Load testing for tritonfleet: Locust users, perf_analyzer sweeps and the one-run benchmark."""
