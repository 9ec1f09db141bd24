"""Load testing for tritonfleet: Locust users (`run`), perf_analyzer sweeps (`perf_sweep`), the one-run benchmark
(`bench`), the length-bucket study (`buckets`) and fault injection under load (`chaos`)."""
