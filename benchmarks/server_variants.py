"""Server configurations to compare side by side in one benchmark run (A/B on a shared machine).

A variant is a label, extra ``VITCODEC_*``-style environment and extra ``vitcodec-cloud serve`` arguments:

    --variant 'asyncio=VITCODEC_EVENT_LOOP=asyncio'   --variant 'uvloop=--event-loop uvloop'

``--baseline-ref REF`` adds a variant that runs the server code of git commit REF instead of the working tree:
the commit's package folders are exported (``git archive``) into a temporary ``vitcodec`` tree, and that tree
goes first on the server's PYTHONPATH, where Python finds it before the editable install. Same interpreter and
libraries; only the project's code differs.
Also the benchmarks' one way to start a server, `start_server` (on free ports, optionally with TLS, for the
default configuration or a variant), and `process_cpu_s`, a server's CPU time (what a transport costs on a shared
machine). The tests' restartable server is tests' own (agent_processes.py); both build on cloud/process.py.
"""

from __future__ import annotations

import io
import os
import shlex
import ssl
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib
from vitcodec.cloud.process import ServerProcess
from vitcodec.packages.bundled import zoo_root

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Variant:
    label: str
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    zoo: Path | None = None  # a commit's own bundled zoo: its server serves bundled models from there

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.env.items()] + self.args
        return " ".join(parts) or "(defaults)"


def parse_variant(text: str) -> Variant:
    """``LABEL=TOKENS``: tokens of the form ``NAME=VALUE`` are environment, the rest are server arguments."""
    label, sep, spec = text.partition("=")
    if not sep or not label.strip():
        raise ValueError(f"a variant is LABEL=SPEC (e.g. 'uvloop=--event-loop uvloop'), got {text!r}")
    variant = Variant(label.strip())
    for token in shlex.split(spec):
        name, eq, value = token.partition("=")
        if eq and not token.startswith("-") and name.isidentifier():
            variant.env[name] = value
        else:
            variant.args.append(token)
    return variant


def export_ref(ref: str, dest: Path | None = None) -> Path:
    """Export commit `ref`'s package folders into ``dest/vitcodec/...``; returns the PYTHONPATH entry."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    pyproject = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:pyproject.toml"],
                               check=True, capture_output=True).stdout
    package_dir: dict[str, str] | None = tomllib.loads(pyproject.decode()).get("tool", {}).get(
        "setuptools", {}).get("package-dir")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit],
                             check=True, capture_output=True).stdout
    root = Path(dest or tempfile.mkdtemp(prefix=f"vitcodec-{commit[:10]}-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            target = _target(member.name, package_dir, root)
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None
                target.write_bytes(extracted.read())
    (root / "COMMIT").write_text(commit + "\n")
    return root


def _target(name: str, package_dir: dict[str, str] | None, root: Path) -> Path | None:
    """Where file `name` of the commit goes under `root`, or None if it is not package code. Two layouts:
    today's one distribution per folder (``<folder>/src/vitcodec/...``) and, for older commits, one
    distribution whose pyproject ``package-dir`` maps folders into the namespace."""
    if package_dir is None:
        folder, sep, rest = name.partition("/src/vitcodec/")
        return root.joinpath("vitcodec", *rest.split("/")) if sep and "/" not in folder else None
    # longest source folder first, so 'cloud/rest' wins over 'cloud' for files under it
    for src, pkg in sorted(((s.rstrip("/"), p) for p, s in package_dir.items()), key=lambda p: -len(p[0])):
        if name.startswith(src + "/"):
            return root.joinpath(*pkg.split("."), name[len(src) + 1:])
    return None


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_variant(ref: str) -> Variant:
    """The server code of git commit `ref`, first on PYTHONPATH (see the module docstring)."""
    root = export_ref(ref)
    zoo = root / "vitcodec" / "packages" / "zoo"
    # the bundled zoo's cloud files are found relative to the zoo of the code that runs (issue 18's split), so
    # the commit's server must serve its own copy of a bundled model, not the working tree's
    return Variant(f"base {ref}", env={"PYTHONPATH": str(root)}, zoo=zoo if zoo.is_dir() else None)


def start_server(package, serve_args: Sequence[str] = (), variant: Variant | None = None,
                 log_prefix: str = "vitcodec-bench-", tls: Mapping[str, Path] | None = None,
                 timeout: float = 300.0) -> tuple[ServerProcess, int, int]:
    """``vitcodec-cloud serve`` for ``package`` on two free 127.0.0.1 ports (cloud/process.py's
    `ServerProcess.serving`), ready to answer; returns (server, http_port, grpc_port). The variant's arguments come
    after ``serve_args`` (so they win) and its environment replaces the inherited ``VITCODEC_*`` variables, so
    that only the benchmark configures the server. ``tls``: ``{"cert": PATH, "key": PATH, "ca": PATH}`` serves
    both ports over TLS, checked against ``ca``."""
    variant = variant or Variant("server")
    args = ["--log-level", "warning", *serve_args]
    context = None
    if tls is not None:
        args += ["--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]
        context = ssl.create_default_context(cafile=str(tls["ca"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITCODEC_")}
    env.update(variant.env)
    repository = package.path.parent.parent
    if variant.zoo is not None and repository.resolve() == zoo_root().resolve():
        repository = variant.zoo
    server = ServerProcess.serving(repository, package.name,
                                   Path(tempfile.mkdtemp(prefix=log_prefix)) / "server.log", *args, *variant.args,
                                   env=env, ssl_context=context)
    server.start_ready(timeout)
    return server, int(server.http_url.rpartition(":")[2]), server.grpc_port
