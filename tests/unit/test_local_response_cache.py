"""The local launcher turns Triton's local response cache on by default, pointing it at the wheel's caches/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritonfleet.deploy.local.__main__ import parse_args
from tritonfleet.deploy.local.runtime import TritonRuntime
from tritonfleet.deploy.local.server import DEFAULT_RESPONSE_CACHE_BYTES, ServerOptions, tritonserver_command

pytestmark = pytest.mark.unit

ROOT = Path("/site-packages/pytriton/tritonserver")
RUNTIME = TritonRuntime(ROOT / "bin" / "tritonserver", Path("/libs"), ROOT / "backends" / "python", Path("/stub"))


def command(**options) -> list[str]:
    return tritonserver_command(ServerOptions(Path("/repo"), **options), RUNTIME, Path("/backends"))


def test_the_cache_is_on_by_default_with_the_wheels_cache_directory():
    arguments = command()
    assert f"--cache-config=local,size={DEFAULT_RESPONSE_CACHE_BYTES}" in arguments
    assert f"--cache-directory={ROOT / 'caches'}" in arguments


def test_size_zero_turns_it_off_and_explicit_flags_win():
    assert not [arg for arg in command(response_cache_bytes=0) if arg.startswith("--cache")]
    mine = ("--cache-config=local,size=1024",)
    assert [arg for arg in command(extra_args=mine) if arg.startswith("--cache-config")] == list(mine)
    with pytest.raises(ValueError, match="response_cache_bytes"):
        command(response_cache_bytes=-1)


def test_launcher_flag():
    args, extra = parse_args(["--model-repository", "repo", "--response-cache-mb", "64"])
    assert round(args.response_cache_mb * 2**20) == 64 * 2**20 and not extra
    assert parse_args(["--model-repository", "repo"])[0].response_cache_mb * 2**20 == DEFAULT_RESPONSE_CACHE_BYTES


def test_the_wheel_ships_the_local_cache():
    runtime = TritonRuntime.discover()
    assert (runtime.server_binary.parent.parent / "caches" / "local" / "libtritoncache_local.so").is_file()
