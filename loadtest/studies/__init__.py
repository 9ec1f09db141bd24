"""The small library every study stands on: an exported repository, a served one, one perf_analyzer runner (with the
unstable-point retry) and one report header. Each study module is its own measurement on top of these."""

from tritonfleet.loadtest.studies.header import ReportHeader, cpu_model, git_revision, machine_description, write_report
from tritonfleet.loadtest.studies.perf import (
    UNSTABLE_EXIT_CODE,
    UNSTABLE_MESSAGE,
    PerfPoint,
    is_unstable,
    parse_perf_csv,
    read_points,
    run_until_stable,
)
from tritonfleet.loadtest.studies.repository import (
    copy_repository,
    export_esm2_repository,
    export_factory_repository,
    exported_precision,
    exported_repository,
    scratch_folder,
)
from tritonfleet.loadtest.studies.serving import serve

__all__ = [
    "UNSTABLE_EXIT_CODE",
    "UNSTABLE_MESSAGE",
    "PerfPoint",
    "ReportHeader",
    "copy_repository",
    "cpu_model",
    "export_esm2_repository",
    "export_factory_repository",
    "exported_precision",
    "exported_repository",
    "git_revision",
    "is_unstable",
    "machine_description",
    "parse_perf_csv",
    "read_points",
    "run_until_stable",
    "scratch_folder",
    "serve",
    "write_report",
]
