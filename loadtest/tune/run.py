"""One tuning run: prepare, search with Model Analyzer, re-measure its best against the shipped config, decide."""

from __future__ import annotations

import csv
import datetime
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from tritonfleet.contract.model_config import CONFIG_FILENAME, ModelConfig, read_config, write_config
from tritonfleet.deploy.local.tritonserver_exec import write_shim
from tritonfleet.loadtest.perf_analyzer import PerfAnalyzerNotInstalledError, write_wrapper
from tritonfleet.loadtest.perf_sweep import write_input_data
from tritonfleet.loadtest.studies.serving import free_ports, port_is_free
from tritonfleet.loadtest.tune.ab import Comparison, Remeasurement, choose, remeasure, summarize
from tritonfleet.loadtest.tune.analyzer import (
    default_variant,
    profile_config,
    report_config,
    run_model_analyzer,
)
from tritonfleet.loadtest.tune.ranking import (
    RankedConfig,
    VariantSettings,
    export_command,
    export_flags,
    parse_results_csv,
    rank_configs,
)
from tritonfleet.loadtest.tune.settings import RunPaths, TuneError, TuneSettings
from tritonfleet.loadtest.workload import buckets_from_repository, generate_sequences, length_mix, repository_targets


@dataclass
class TuneResult:
    settings: TuneSettings
    ports: tuple[int, int, int]
    ranking: list[RankedConfig]
    variant_settings: dict[str, VariantSettings]
    comparisons: list[Comparison]
    winner: Comparison
    reason: str
    export_flags: list[str]
    manual_changes: list[str]
    export_command: str | None
    search_s: float
    total_s: float
    interrupted: bool
    ports_free_after: bool
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    started: str
    summary_report: Path | None = None


def prepare(settings: TuneSettings, paths: RunPaths) -> tuple[ModelConfig, tuple[int, int, int]]:
    """Clean the output, write the tools, the input data and the profile config; (shipped config, ports)."""
    repository = Path(settings.model_repository)
    config_path = repository / settings.model / CONFIG_FILENAME
    if not config_path.is_file():
        raise TuneError(f"no {config_path}: is --model right, and was the repository exported (`make export`)?")
    shipped = read_config(config_path)
    shipped.name = shipped.name or settings.model
    if any(character in str(paths.root.resolve()) for character in " ="):
        raise TuneError(f"--output {paths.root} must not contain spaces or '=' (Model Analyzer splits perf_analyzer "
                        "flags at both)")  # fmt: skip
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.clean()
    paths.work.mkdir(parents=True)
    write_shim(paths.server_shim)
    try:
        write_wrapper(paths.perf_analyzer_wrapper)
    except PerfAnalyzerNotInstalledError as error:
        raise TuneError(str(error)) from error
    target = repository_targets(repository)[settings.model]
    sequences = generate_sequences(settings.sequences, length_mix(settings.length_mix))
    write_input_data(target, sequences, buckets_from_repository(repository), paths.input_data(settings.model))
    ports = free_ports(3)
    paths.profile_config.write_text(yaml.safe_dump(profile_config(settings, paths, shipped, ports), sort_keys=False))
    return shipped, ports


def variant_config(paths: RunPaths, variant: str, shipped: ModelConfig) -> ModelConfig:
    """The config Model Analyzer generated for `variant` (the shipped one for the default), named as the model."""
    path = paths.variants / variant / CONFIG_FILENAME
    config = read_config(path) if path.is_file() else copy_config(shipped)
    config.name = shipped.name
    return config


def copy_config(config: ModelConfig) -> ModelConfig:
    return ModelConfig.FromString(config.SerializeToString())


def tune(settings: TuneSettings) -> TuneResult:
    started = datetime.datetime.now(datetime.timezone.utc)
    clock = time.monotonic()
    load_before = os.getloadavg()
    paths = RunPaths(Path(settings.output).resolve())
    shipped, ports = prepare(settings, paths)
    search_s, comparison_s = settings.estimate_s()
    print(f"Model Analyzer: {settings.space.variants} variants + the default of {settings.model} at concurrency "
          f"{list(settings.space.concurrency)} (~{search_s / 60:.0f} min, at most "
          f"{settings.profile_timeout_s / 60:.0f}), then the best {settings.candidates} vs the default "
          f"(~{comparison_s / 60:.0f} min); load average now {load_before[0]:.2f}", flush=True)  # fmt: skip

    search_start = time.monotonic()
    status, interrupted = run_model_analyzer(
        ["profile", "-f", str(paths.profile_config)], paths, settings.profile_timeout_s
    )
    search_elapsed = time.monotonic() - search_start
    if not paths.results_csv.is_file():
        raise TuneError(f"model-analyzer profile exited {status} without {paths.results_csv}; see {paths.log}")
    ranking = rank_configs(parse_results_csv(paths.results_csv.read_text()))
    if not ranking:
        raise TuneError(f"model-analyzer profile measured nothing (exit {status}); see {paths.log}")
    if status != 0 and not interrupted:
        print(f"warning: model-analyzer profile exited {status}; using the {len(ranking)} configs it measured")
    ports_free = all(port_is_free(port) for port in ports)

    default = default_variant(settings.model)
    candidates = [config.variant for config in ranking if config.variant != default][: settings.candidates]
    paths.report_config.write_text(yaml.safe_dump(report_config(paths, [default, *candidates]), sort_keys=False))
    report_status, _ = run_model_analyzer(["report", "-f", str(paths.report_config)], paths, 600)
    if report_status != 0:
        print(f"warning: model-analyzer report exited {report_status}; see {paths.log}")

    # The default is measured with the shipped config.pbtxt itself; the candidates with Model Analyzer's variants.
    configs = {
        default: copy_config(shipped),
        **{variant: variant_config(paths, variant, shipped) for variant in candidates},
    }
    print(f"Re-measuring {', '.join(configs)} interleaved ({settings.ab_rounds} rounds, concurrency "
          f"{settings.comparison_concurrency})", flush=True)  # fmt: skip
    measurements = remeasure(settings, configs, paths.input_data(settings.model), paths.work / "comparison")
    write_comparison_csv(paths.comparison_csv, measurements)
    comparisons = summarize(measurements)
    decision = choose(comparisons, default, settings.p99_ms)
    winner = decision.winner

    chosen = configs[winner.variant]
    flags, manual = export_flags(shipped, chosen)
    command = export_command((Path(settings.model_repository) / settings.model / CONFIG_FILENAME).read_text(), flags)
    write_best_repository(settings, paths, chosen, winner.variant, flags, manual)
    variant_settings = {
        config.variant: knobs
        for config in ranking
        if (knobs := VariantSettings.read(variant_config(paths, config.variant, shipped))) is not None
    }
    summaries = sorted((paths.root / "reports" / "summaries" / settings.model).glob("result_summary.*"))
    return TuneResult(
        settings=settings,
        ports=ports,
        ranking=ranking,
        variant_settings=variant_settings,
        comparisons=comparisons,
        winner=winner,
        reason=decision.reason,
        export_flags=flags,
        manual_changes=manual,
        export_command=command,
        search_s=search_elapsed,
        total_s=time.monotonic() - clock,
        interrupted=interrupted,
        ports_free_after=ports_free,
        load_before=load_before,
        load_after=os.getloadavg(),
        started=started.strftime("%Y-%m-%d %H:%M UTC"),
        summary_report=summaries[0] if summaries else None,
    )


def write_comparison_csv(path: Path, measurements: Sequence[Remeasurement]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(measurements[0])))
        writer.writeheader()
        writer.writerows(asdict(m) for m in measurements)


def write_best_repository(
    settings: TuneSettings, paths: RunPaths, chosen: ModelConfig, variant: str, flags: list[str], manual: list[str]
) -> Path:
    """A copy of the input repository (weights included) with the chosen config.pbtxt: ready to serve."""
    target = paths.best_repository
    shutil.copytree(settings.model_repository, target, ignore=shutil.ignore_patterns("__pycache__"))
    header = (
        f"# Chosen by `python -m tritonfleet.loadtest.tune` (Model Analyzer variant {variant}) for the machine it "
        "ran on.\n"
        f"# python -m export flags: {' '.join(flags) or '(none)'}"
        + (f"; not covered by a flag: {'; '.join(manual)}" if manual else "")
        + "\n"
    )
    write_config(chosen, target / settings.model, header)
    return target
