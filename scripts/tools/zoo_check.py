# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""Check the bundle as the MONAI model zoo checks a submitted bundle, with the zoo's own tools.

Usage (from the bundle root, with the bundle's own environment)::

    python -m scripts.tools.zoo_check --zoo /path/to/model-zoo
    python -m scripts.tools.zoo_check --zoo /path/to/model-zoo --schema meta_schema_20240725.json --out docs/model-zoo

Steps, each written to the transcript with its command, exit status, wall time and full output:

1. a separate environment (default ``.venv-zoo`` in the bundle root, ignored by git) with the zoo's code
   format tools as its ``requirements-dev.txt`` names them (flake8 and its plugins, pycodestyle, pyflakes,
   mccabe, black, isort). The zoo's ``runtests.sh`` imports MONAI before it checks anything, so the
   environment also sees the packages of the running (bundle) environment through a ``.pth`` file;
2. a temporary copy of the zoo checkout (its root files, ``ci/`` and ``models/model_info.json``; the zoo's
   own bundles only with ``--all_bundles``) with the bundle copied to ``models/<name>/``: the files git
   would commit (tracked and untracked but not ignored), or ``--from_commit REV``. Nothing is written into
   the bundle (but the transcript in ``--out``) or into the checkout;
3. the zoo's format checks, as its CI runs them: ``runtests.sh --isort``, ``--black`` (``black
   --skip-magic-trailing-comma``) and ``--flake8``, each on the whole copy, from its root, with the zoo's
   ``setup.cfg`` and ``pyproject.toml``. ``runtests.sh --codeformat`` also runs pytype, a static type
   checker, which is not run here;
4. the metadata schema at ``models/<name>/eval/schema.json``, where ``verify_bundle.py`` reads it: the zoo's
   ``ci/prepare_schema.py`` downloads the URL of the ``schema`` key; ``--schema FILE`` puts a local copy of
   that file there instead (for machines without web access);
5. the app properties: ``verify_bundle.py`` checks a workflow's properties for every app of
   ``supported_apps`` whose folder ``<zoo>/<app>/`` holds a ``bundle_properties.py``. Where the checkout has
   none, one that takes MONAI's own ``InferProperties`` and ``MetaProperties`` (``monai.bundle.properties``)
   is written into the copy, and the transcript says so; the step fails if no property check would run;
6. ``python ci/verify_bundle.py -b <name> -p models -m full`` in the copy, with the running environment:
   large files and their hashes, required files, version and changelog, metadata against the schema, the
   inference workflow's properties, the network's input and output shapes, TorchScript export and loading
   of ``models/model.ts``. Its output must report the property check.

The transcript goes to ``--out/verify.md`` (default ``docs/model-zoo/verify.md``). Exit status 0 when every
step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = ["FORMAT_TOOLS", "Stage", "ZooCheckError", "format_tool_requirements", "main", "run_zoo_check"]

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NAME = "ear_vertebra_reconstruction"
#: the zoo's code format tools: the names of its requirements-dev.txt lines that are installed
FORMAT_TOOLS = (
    "flake8",
    "flake8-bugbear",
    "flake8-comprehensions",
    "flake8-executable",
    "pep8-naming",
    "pycodestyle",
    "pyflakes",
    "mccabe",
    "black",
    "isort",
)
#: the zoo checkout's files this check reads (a missing one means the path is not a model-zoo checkout)
ZOO_FILES = ("ci/verify_bundle.py", "ci/utils.py", "ci/prepare_schema.py", "runtests.sh", "setup.cfg")
PROPERTIES_NOTE = (
    "# Written by the EAR bundle's scripts/tools/zoo_check.py into a temporary copy of the MONAI model zoo:\n"
    "# the checkout has no {app}/bundle_properties.py, so the properties checked are MONAI's own.\n"
    "from monai.bundle.properties import InferProperties, MetaProperties  # noqa: F401\n"
)
COMMAND_TIMEOUT_S = 1800
#: pip output lines about the package indexes it looked in, left out of the transcript
PIP_INDEX_LINES = ("Looking in indexes", "Looking in links", "WARNING: Location '")


class ZooCheckError(RuntimeError):
    """A check that cannot start: the message says what to give or fix."""


@dataclass
class Stage:
    """One step of the check, as the transcript shows it."""

    name: str
    command: str
    cwd: str
    returncode: int
    seconds: float
    output: str
    note: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.returncode == 0


def format_tool_requirements(requirements_dev: str) -> list[str]:
    """The lines of the zoo's ``requirements-dev.txt`` that install its code format tools, as written there.

    Raises:
        ZooCheckError: the file names none of :data:`FORMAT_TOOLS`.
    """
    lines = []
    for raw in requirements_dev.splitlines():
        line = raw.split("#", 1)[0].strip()
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower()
        if name in FORMAT_TOOLS:
            lines.append(line)
    if not lines:
        raise ZooCheckError(
            "the zoo's requirements-dev.txt names none of the format tools "
            f"({', '.join(FORMAT_TOOLS)}); give the root of a Project-MONAI/model-zoo checkout with --zoo."
        )
    return lines


def _run(cmd: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT_S):
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        code, out = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        code, out = 124, f"{e.stdout or ''}{e.stderr or ''}\n(stopped after {timeout:.0f} s)"
    return code, re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out), time.perf_counter() - t0


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_zoo(zoo: Path) -> None:
    missing = [f for f in ZOO_FILES if not (zoo / f).is_file()]
    if not zoo.is_dir() or missing:
        raise ZooCheckError(
            f"{zoo} is not a model-zoo checkout (missing {', '.join(missing) or 'the folder'}); give the root of a "
            "checkout of https://github.com/Project-MONAI/model-zoo with --zoo."
        )
    if not (zoo / "models" / "model_info.json").is_file():
        raise ZooCheckError(f"{zoo}/models/model_info.json is missing; verify_bundle.py reads it. Use a full checkout.")


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def setup_environment(venv: Path, zoo: Path) -> Stage:
    """Make (or reuse) the environment with the zoo's format tools and a view of the running environment."""
    requirements = format_tool_requirements((zoo / "requirements-dev.txt").read_text())
    python = _venv_python(venv)
    log, code, t0 = [], 0, time.perf_counter()
    commands = []
    if not python.is_file():
        commands.append([sys.executable, "-m", "venv", str(venv)])
    commands.append([str(python), "-m", "pip", "install", "--upgrade", "--progress-bar", "off", *requirements])
    for cmd in commands:
        c, out, _ = _run(cmd, BUNDLE_ROOT)
        kept = [line for line in out.splitlines() if not line.startswith(PIP_INDEX_LINES)]  # where pip looked
        log.append(f"$ {shlex.join(cmd)}\n" + "\n".join(kept).strip())
        if c:
            code = c
            break
    # runtests.sh imports monai before its checks: the running environment's packages, after the tools' own
    pth_name, own_site = "zz_bundle_environment.pth", sysconfig.get_paths()["purelib"]
    if code == 0:
        query = [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        site = subprocess.run(query, capture_output=True, text=True, check=True).stdout.strip()
        (Path(site) / pth_name).write_text(own_site + "\n")
        log.append(f"wrote {site}/{pth_name}: {own_site}")
    note = (
        f"{venv.name}: the zoo's format tools as its requirements-dev.txt names them ({', '.join(requirements)}); "
        f"{pth_name} adds the bundle's environment ({own_site}: MONAI, torch) after them, as runtests.sh imports "
        "monai before any check."
    )
    return Stage(
        "environment",
        " && ".join(shlex.join(c) for c in commands),
        str(BUNDLE_ROOT),
        code,
        time.perf_counter() - t0,
        "\n\n".join(log),
        note,
    )


def _bundle_files(from_commit: str | None) -> list[str]:
    if from_commit:
        listed = _git(["ls-tree", "-r", "--name-only", from_commit], BUNDLE_ROOT)
    else:
        listed = _git(["ls-files", "--cached", "--others", "--exclude-standard"], BUNDLE_ROOT)
    if listed is None:
        raise ZooCheckError(
            f"cannot list the bundle's files with git in {BUNDLE_ROOT}"
            + (f" at {from_commit}" if from_commit else "")
            + "; run the check in a git checkout of the bundle (and give an existing commit to --from_commit)."
        )
    return [f for f in listed.splitlines() if f]


def copy_zoo_and_bundle(zoo: Path, work: Path, name: str, all_bundles: bool, from_commit: str | None) -> Stage:
    """The temporary zoo copy with the bundle in ``models/<name>/``."""
    t0 = time.perf_counter()
    target = work / "model-zoo"

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {".git"} if Path(folder) == zoo else set()
        if Path(folder) == zoo / "models" and not all_bundles:
            skip |= {n for n in names if (Path(folder) / n).is_dir()}
        return skip & set(names)

    shutil.copytree(zoo, target, ignore=ignore, symlinks=True)
    bundle = target / "models" / name
    if bundle.exists():
        raise ZooCheckError(f"the zoo already has a bundle {name!r}; give another --name.")
    if from_commit:
        resolved = _git(["rev-parse", "--verify", f"{from_commit}^{{commit}}"], BUNDLE_ROOT)
        if resolved is None:
            raise ZooCheckError(
                f"--from_commit {from_commit}: no such commit in {BUNDLE_ROOT}; give a commit or branch."
            )
        from_commit = resolved
    files = _bundle_files(from_commit)
    for rel in files:
        dst = bundle / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if from_commit:
            dst.write_bytes(
                subprocess.run(
                    ["git", "show", f"{from_commit}:{rel}"], cwd=BUNDLE_ROOT, capture_output=True, check=True
                ).stdout
            )
        elif (BUNDLE_ROOT / rel).is_file():
            shutil.copy2(BUNDLE_ROOT / rel, dst)
    head = _git(["rev-parse", "HEAD"], BUNDLE_ROOT) or "unknown"
    dirty = _git(["status", "--porcelain"], BUNDLE_ROOT)
    source = (
        f"commit {from_commit}"
        if from_commit
        else f"the working tree at commit {head} ({len((dirty or '').splitlines())} paths differ from it)"
    )
    kept = "with the zoo's own bundles" if all_bundles else "without the zoo's own bundles (--all_bundles adds them)"
    output = (
        f"copied {zoo} to $WORK/model-zoo {kept}\ncopied {len(files)} files of the bundle ({source}) to models/{name}"
    )
    if not from_commit and dirty:
        output += "\nthe working tree differs from that commit in (git status --porcelain):\n" + dirty
    return Stage(
        "copy",
        f"copy $ZOO -> $WORK/model-zoo; bundle -> models/{name}",
        str(work),
        0,
        time.perf_counter() - t0,
        output,
        extra={"bundle_source": source},
    )


def format_checks(copy: Path, python: Path) -> list[Stage]:
    """``runtests.sh --isort``, ``--black`` and ``--flake8`` in the copy, with the tools' environment."""
    env = {**os.environ, "MONAI_MODEL_ZOO_PY_EXE": str(python), "TERM": "dumb"}
    stages = []
    for tool in ("isort", "black", "flake8"):
        cmd = ["bash", "runtests.sh", f"--{tool}"]
        code, out, secs = _run(cmd, copy, env=env)
        stages.append(
            Stage(
                tool,
                f"MONAI_MODEL_ZOO_PY_EXE=$ZOO_VENV/bin/python {shlex.join(cmd)}",
                "$WORK/model-zoo",
                code,
                secs,
                out,
            )
        )
    return stages


def place_schema(copy: Path, name: str, schema: Path | None, python: str) -> Stage:
    """``models/<name>/eval/schema.json``: the given file, or the zoo's download of the metadata's URL."""
    bundle = copy / "models" / name
    url = json.loads((bundle / "configs" / "metadata.json").read_text())["schema"]
    t0 = time.perf_counter()
    target = bundle / "eval" / "schema.json"
    if schema is not None:
        if not schema.is_file():
            raise ZooCheckError(f"--schema {schema}: no such file; give a local copy of {url}.")
        try:
            json.loads(schema.read_text())
        except ValueError as e:
            raise ZooCheckError(f"--schema {schema} is not JSON ({e}); give a local copy of {url}.") from e
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(schema, target)
        out = (
            f"metadata schema URL: {url}\nlocal copy given with --schema: {schema.name}, sha256 {_sha256(schema)}\n"
            f"copied to models/{name}/eval/schema.json (where ci/prepare_schema.py would put the download)"
        )
        return Stage(
            "schema",
            f"cp {schema.name} models/{name}/eval/schema.json",
            "$WORK/model-zoo",
            0,
            time.perf_counter() - t0,
            out,
        )
    cmd = [python, "ci/prepare_schema.py", "--l", name, "--p", "models"]
    code, out, secs = _run(cmd, copy)
    note = (
        "" if code == 0 else f"the download of {url} failed; without web access give a local copy with --schema FILE."
    )
    return Stage("schema", shlex.join(["python", *cmd[1:]]), "$WORK/model-zoo", code, secs, out, note)


def provide_properties(zoo: Path, copy: Path, name: str) -> Stage:
    """Where verify_bundle.py looks for each supported app's ``bundle_properties.py``; write MONAI's if absent."""
    apps = json.loads((copy / "models" / name / "configs" / "metadata.json").read_text()).get("supported_apps") or {}
    lines, code, written = [], 0, []
    if not apps:
        return Stage(
            "properties",
            "(none)",
            "$WORK/model-zoo",
            1,
            0.0,
            "supported_apps is empty: verify_bundle.py checks no properties.",
            "name the apps the bundle serves in supported_apps of configs/metadata.json.",
        )
    for app in apps:
        found = sorted((zoo / app).rglob("bundle_properties.py")) if (zoo / app).is_dir() else []
        if found:
            lines.append(f"{app}: the checkout's {found[0].relative_to(zoo)}")
            continue
        target = copy / app / "bundle_properties.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(PROPERTIES_NOTE.format(app=app))
        written.append(f"{app}/bundle_properties.py")
        lines.append(
            f"{app}: the checkout has no {app}/bundle_properties.py; wrote {app}/bundle_properties.py into the copy, "
            "taking InferProperties and MetaProperties from MONAI's monai.bundle.properties:\n"
            + PROPERTIES_NOTE.format(app=app)
        )
    command = "write " + ", ".join(written) if written else "(the checkout's files)"
    return Stage("properties", command, "$WORK/model-zoo", code, 0.0, "\n".join(lines))


def verify_bundle(copy: Path, name: str, python: str) -> Stage:
    """``ci/verify_bundle.py -b <name> -p models -m full`` in the copy; the property check must have run."""
    cmd = [python, "ci/verify_bundle.py", "-b", name, "-p", "models", "-m", "full"]
    code, out, secs = _run(cmd, copy)
    note = ""
    if code == 0 and "successfully checked properties." not in out:
        code, note = 1, "verify_bundle.py passed without checking any app's properties."
    return Stage("verify_bundle", shlex.join(["python", *cmd[1:]]), "$WORK/model-zoo", code, secs, out, note)


def _versions(python: Path) -> str:
    code, out, _ = _run([str(python), "-m", "pip", "list", "--format=freeze"], BUNDLE_ROOT)
    tools = [line for line in out.splitlines() if line.split("==")[0].lower() in FORMAT_TOOLS] if code == 0 else []
    bundle = [f"python=={platform.python_version()}"]
    for package in ("monai", "torch", "numpy", "jsonschema"):  # jsonschema: MONAI's verify_metadata
        try:
            bundle.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            bundle.append(f"{package} not installed")
    return "format tools ($ZOO_VENV): " + ", ".join(tools) + "\nbundle environment: " + ", ".join(bundle)


def _fence(text: str) -> str:
    return "```text\n" + text.replace("```", "'''").rstrip() + "\n```"


def write_transcript(out: Path, stages: list[Stage], header: dict[str, str], paths: dict[str, str]) -> Path:
    """``out/verify.md``: the summary, then every stage with its command, status, time and output.

    The folders of ``paths`` (``{"$WORK": "/tmp/..."}``) are listed once and written as their names elsewhere.
    """
    ok = all(s.passed for s in stages)
    head = [
        "# Model zoo check: transcript",
        "",
        "Written by `python -m scripts.tools.zoo_check` (docs/README.md, Model zoo). "
        f"Result: **{'PASS' if ok else 'FAIL'}**.",
        "",
        *(f"- {k}: {v}" for k, v in header.items()),
        "",
        "Folders in the commands and outputs:",
        "",
        *(f"- `{k}`: `{v}`" for k, v in paths.items()),
    ]
    body = ["", "| stage | result | wall time |", "|---|---|---|"]
    body += [
        f"| {s.name} | {'pass' if s.passed else 'FAIL'} (exit {s.returncode}) | {s.seconds:.1f} s |" for s in stages
    ]
    for s in stages:
        body += ["", f"## {s.name}: {'pass' if s.passed else 'FAIL'}", "", f"In `{s.cwd}`:", "", _fence(s.command)]
        if s.note:
            body += ["", s.note]
        body += ["", f"Exit status {s.returncode}, {s.seconds:.1f} s. Output:", "", _fence(s.output or "(none)")]
    text = "\n".join(body) + "\n"
    for real, name in sorted(((v, k) for k, v in paths.items()), key=lambda p: -len(p[0])):
        text = text.replace(real, name)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "verify.md"
    path.write_text("\n".join(head) + "\n" + text)
    return path


def run_zoo_check(
    zoo: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    out: str | os.PathLike = BUNDLE_ROOT / "docs" / "model-zoo",
    venv: str | os.PathLike = BUNDLE_ROOT / ".venv-zoo",
    name: str = DEFAULT_NAME,
    work: str | os.PathLike | None = None,
    all_bundles: bool = False,
    from_commit: str | None = None,
    keep: bool = False,
) -> tuple[bool, Path]:
    """Run every step and write the transcript.

    Args:
        zoo: root of a Project-MONAI/model-zoo checkout (only read).
        schema: a local copy of the metadata schema named by configs/metadata.json (default: downloaded).
        out: folder of the transcript ``verify.md``.
        venv: the environment of the zoo's format tools (made if missing).
        name: the bundle's folder name in the zoo copy.
        work: where the temporary zoo copy goes (default: a new temporary folder, removed afterwards).
        all_bundles: copy the zoo's own bundles too (the format checks then cover them as well).
        from_commit: copy the bundle as of this commit instead of the working tree.
        keep: keep the temporary copy.

    Returns:
        (every step passed, path of the transcript).

    Raises:
        ZooCheckError: the zoo path, schema file, bundle name or git state cannot be used.
    """
    zoo_path = Path(zoo).resolve()
    _check_zoo(zoo_path)
    schema_path = None if schema is None else Path(schema).resolve()
    venv_path = Path(venv).resolve()
    if re.fullmatch(r"[A-Za-z0-9_]+", name) is None:
        raise ZooCheckError(f"--name {name!r}: a bundle folder name is letters, digits and underscores.")
    work_path = Path(tempfile.mkdtemp(prefix="ear-zoo-check-") if work is None else work).resolve()
    if work is not None and work_path.exists() and any(work_path.iterdir()):
        raise ZooCheckError(f"--work {work_path} is not empty; give a new or empty folder.")
    work_path.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    stages: list[Stage] = []
    try:
        stages.append(setup_environment(venv_path, zoo_path))
        stages.append(copy_zoo_and_bundle(zoo_path, work_path, name, all_bundles, from_commit))
        copy = work_path / "model-zoo"
        if stages[0].passed:
            stages += format_checks(copy, _venv_python(venv_path))
        stages.append(place_schema(copy, name, schema_path, sys.executable))
        stages.append(provide_properties(zoo_path, copy, name))
        if stages[-1].passed and stages[-2].passed:
            stages.append(verify_bundle(copy, name, sys.executable))
        versions = _versions(_venv_python(venv_path))
    finally:
        if not keep and work is None:
            shutil.rmtree(work_path, ignore_errors=True)
    zoo_commit = _git(["rev-parse", "HEAD"], zoo_path) or "unknown (not a git work tree)"
    header = {
        "date (UTC)": started.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
        "bundle": next((s.extra["bundle_source"] for s in stages if "bundle_source" in s.extra), "not copied"),
        "model zoo checkout": f"commit {zoo_commit}",
        "versions": versions.replace("\n", "; "),
    }
    paths = {"$WORK": str(work_path), "$ZOO": str(zoo_path), "$ZOO_VENV": str(venv_path), "$BUNDLE": str(BUNDLE_ROOT)}
    return all(s.passed for s in stages), write_transcript(Path(out), stages, header, paths)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", required=True, help="root of a Project-MONAI/model-zoo checkout (only read)")
    parser.add_argument("--schema", help="local copy of the metadata schema named in configs/metadata.json")
    parser.add_argument("--out", default=str(BUNDLE_ROOT / "docs" / "model-zoo"), help="folder of verify.md")
    parser.add_argument("--venv", default=str(BUNDLE_ROOT / ".venv-zoo"), help="environment of the format tools")
    parser.add_argument("--name", default=DEFAULT_NAME, help="the bundle's folder name under models/ of the zoo")
    parser.add_argument("--work", help="folder for the temporary zoo copy (default: a new temporary folder)")
    parser.add_argument("--all_bundles", action="store_true", help="copy (and format-check) the zoo's bundles too")
    parser.add_argument("--from_commit", help="check the bundle as of this commit instead of the working tree")
    parser.add_argument("--keep", action="store_true", help="keep the temporary zoo copy")
    args = parser.parse_args(argv)
    try:
        ok, transcript = run_zoo_check(
            args.zoo,
            args.schema,
            args.out,
            args.venv,
            args.name,
            args.work,
            args.all_bundles,
            args.from_commit,
            args.keep,
        )
    except ZooCheckError as e:
        print(f"zoo_check: {e}", file=sys.stderr)
        return 2
    print(f"{'PASS' if ok else 'FAIL'}: transcript in {transcript}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
