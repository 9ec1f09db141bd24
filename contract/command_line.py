"""What every command line of the project shares (`tritonfleet <command>` and the `python -m` forms): help that shows
defaults, old flag spellings kept for one release with a warning, and server addresses given as `--url` +
`--protocol`.

Standard library only: the client extra and the NGC image's python need nothing more.
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from collections.abc import Sequence

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


class MissingToolError(RuntimeError):
    """An external program a command needs (perf_analyzer, haproxy, ...) is not installed; the message names it and
    how to get it, on one line (`tritonfleet` prints it as `tritonfleet COMMAND: error: ...`, exit status 2)."""


LOOPBACK = "127.0.0.1"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (options without help too), except where the help already says it or there is
    none to show (None, False, an empty list)."""

    @staticmethod
    def _has_default(action: argparse.Action) -> bool:
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return False
        return bool(action.option_strings)

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.help is not argparse.SUPPRESS and self._has_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not self._has_default(action):
            return text
        return super()._get_help_string(action)


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr (and a DeprecationWarning for code that runs us in-process): `old` goes away next release."""
    message = f"{old} is deprecated and will be removed in the next release: use {new}"
    print(f"warning: {message}", file=sys.stderr)
    warnings.warn(message, DeprecationWarning, stacklevel=2)


def deprecated_alias(new: str) -> type[argparse.Action]:
    """An argparse action for an old spelling of `new`: stores into the same dest and warns once used."""

    class DeprecatedAlias(argparse._StoreAction):
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
            warn_deprecated(option_string or self.dest, new)
            super().__call__(parser, namespace, values, option_string)

    return DeprecatedAlias


def add_deprecated(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, **kwargs) -> None:
    """Accepts `old` as a hidden alias of the option `new` (its dest: `new`'s when `new` is a plain flag, else
    `old`'s, unless given)."""
    plain = new.startswith("--") and " " not in new
    kwargs.setdefault("dest", (new if plain else old).lstrip("-").replace("-", "_"))
    parser.add_argument(old, action=deprecated_alias(new), help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def warn_python_m(module: str | None, command: str) -> None:
    """Printed by a checkout-only `python -m MODULE` entry point (`python -m export`, `deploy.local`, ...) that
    `tritonfleet COMMAND` replaces. `module` is the running `__main__`'s `__spec__.name`, so the warning names the form
    that was typed; the installed form `python -m tritonfleet.<stage>...` stays quiet."""
    name = (module or "?").removesuffix(".__main__")
    if not name.startswith("tritonfleet."):
        warn_deprecated(f"`python -m {name}`", f"`tritonfleet {command}`")


def split_url(text: str) -> tuple[str | None, str]:
    """'grpc://host:8001' -> ('grpc', 'host:8001'); 'host:8000' -> (None, 'host:8000')."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        return None, text
    scheme = scheme.lower()
    if scheme in ("http", "https"):
        return "http", rest.rstrip("/")
    if scheme == "grpc":
        return "grpc", rest.rstrip("/")
    raise argparse.ArgumentTypeError(f"--url {text!r}: the scheme must be http:// or grpc://")


def add_server_url(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, old_http_flag: str, old_grpc_flag: str = "--grpc-url"
) -> None:
    """The repeatable `--url [SCHEME://]HOST:PORT` of the load tools, with their old per-protocol spellings kept as
    deprecated aliases; `url_values(args)` folds them back into `--url` values."""
    parser.add_argument(
        "--url",
        action="append",
        metavar="[SCHEME://]HOST:PORT",
        help="the server (repeatable): http://HOST:PORT and/or grpc://HOST:PORT; without a scheme, the address of "
        "the one --protocol (default: 127.0.0.1:8000 for http, 127.0.0.1:8001 for grpc)",
    )
    add_deprecated(parser, old_http_flag, "--url http://HOST:PORT", dest="deprecated_http_url")
    add_deprecated(parser, old_grpc_flag, "--url grpc://HOST:PORT", dest="deprecated_grpc_url")


def url_values(args: argparse.Namespace) -> list[str]:
    """`--url` values, plus those the deprecated per-protocol flags of `add_server_url` gave."""
    urls = list(args.url or [])
    for scheme, old in (("http", "deprecated_http_url"), ("grpc", "deprecated_grpc_url")):
        if value := getattr(args, old, None):
            urls.append(f"{scheme}://" + value.split("://", 1)[-1])
    return urls


def server_urls(urls: Sequence[str] | None, protocols: Sequence[str], host: str = LOOPBACK) -> dict[str, str]:
    """{protocol: HOST:PORT} for each of `protocols` from `--url` values.

    A url with a scheme (http://, grpc://) names its protocol; one without applies to the only protocol asked for
    (with two protocols, give each its scheme). Protocols with no url get the default port on `host`.
    """
    chosen: dict[str, str] = {}
    for text in urls or ():
        scheme, address = split_url(text)
        if scheme is None:
            if len(protocols) != 1:
                raise argparse.ArgumentTypeError(
                    f"--url {text!r}: with protocols {','.join(protocols)} prefix each url with http:// or grpc://"
                )
            scheme = protocols[0]
        chosen[scheme] = address
    return {protocol: chosen.get(protocol, f"{host}:{DEFAULT_PORTS[protocol]}") for protocol in protocols}
