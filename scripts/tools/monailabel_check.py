# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""End-to-end check of the MONAI Label adapter with a real server and real REST requests.

Usage (from the bundle root, with the bundle's own environment)::

    python -m scripts.tools.monailabel_check --work /tmp/ear-monailabel-check
    python -m scripts.tools.monailabel_check --work /tmp/ear-monailabel-check --publish docs/monailabel
    python -m scripts.tools.monailabel_check --setup_only

Steps, each logged with its command and wall time:

1. make a separate environment (default ``.venv-monailabel`` in the bundle root) and install
   ``monailabel==0.8.5`` beside the bundle's pinned requirements there, with ``numpy<2``, ``pydicom<3`` and
   ``jsonschema<4`` (MONAI Label's ``pydicom-seg`` needs them) and the torchvision release that matches the pinned
   torch;
   ``--torch_index`` adds a package index for torch / torchvision builds (e.g. a CPU wheel index). If
   torchvision then cannot be imported (its wheel built for another torch variant), it is uninstalled and
   that is written into the transcript (neither MONAI Label's server nor the adapter imports it).
2. prepare the embedded example (``python -m scripts.prepare --source example``) at the model's spacing and
   crop size, simulate its X-ray pairs (``python -m scripts.simulate``), and build a datastore: the test
   vertebra as ``<id>_ap.png`` + ``<id>_lat.png`` (naming convention), the validation vertebra as
   ``<id>_frontal.png`` + ``<id>_side.png`` with a sidecar ``<id>_frontal.json``, and one AP image without
   its lateral partner;
3. write the app folder and start ``monailabel start_server`` on a free local port;
4. send ``GET /info/``, three ``POST /infer/ear?image=<id>`` requests (volume by naming convention, mesh
   by sidecar, a missing partner) and one ``POST /infer/spine?image=spine_lat`` (the example scan's two full
   radiographs) and check the answers: a NIfTI of the model's crop size with HU values, its Dice against the
   vertebra's ground truth, a binary STL, HTTP 400 naming the missing file, and a label map of the vertebrae
   found with a confidence for each;
5. stop the server, check that the server's work folder is empty again and that nothing was written into
   the bundle folder, draw a preview of the answer and write ``transcript.md`` + ``preview.png``.

Everything goes to ``--work`` (default: a new temporary folder); only ``--publish DIR`` copies the
transcript and the preview to ``DIR``. Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import email.policy
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.monailabel.core import BUNDLE_ROOT, check_outside_bundle
from scripts.monailabel.service import write_app_dir

__all__ = ["main", "run_check", "requirements_for_monailabel", "matching_torchvision", "parse_multipart"]

MONAILABEL_VERSION = "0.8.5"
#: requirement lines of the bundle replaced in the MONAI Label environment (MONAI Label's own limits)
REPLACED_PINS = {"numpy": "numpy<2", "pydicom": "pydicom<3", "jsonschema": "jsonschema<4"}
DEFAULT_CONFIGS = "configs/inference.json,configs/cpu.json"
SERVER_START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0


def matching_torchvision(torch_version: str) -> str:
    """The torchvision release made for a torch release (``2.13.0`` -> ``0.28.0``: minor + 15, same patch).

    Raises:
        ValueError: ``torch_version`` is not ``2.<minor>.<patch>``.
    """
    match = re.fullmatch(r"2\.(\d+)\.(\d+)(?:\+\w+)?", torch_version.strip())
    if not match:
        raise ValueError(f"torch version {torch_version!r} is not 2.<minor>.<patch>; pin torch==2.x.y.")
    return f"0.{int(match.group(1)) + 15}.{match.group(2)}"


def requirements_for_monailabel(bundle_requirements: str) -> tuple[list[str], str]:
    """The MONAI Label environment's requirement lines, derived from the bundle's ``requirements.txt`` text.

    Every pin is kept except those of :data:`REPLACED_PINS`; ``monailabel==0.8.5`` and the torchvision that
    matches the pinned torch are added.

    Returns:
        (requirement lines, the pinned torch version).

    Raises:
        ValueError: the bundle's requirements pin no torch version.
    """
    lines, torch_version = [], None
    for raw in bundle_requirements.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower()
        if name == "torch":
            torch_version = line.split("==", 1)[1].strip() if "==" in line else None
        lines.append(REPLACED_PINS.get(name, line))
    if not torch_version:
        raise ValueError("the bundle's requirements.txt pins no torch version (torch==2.x.y); cannot pick torchvision.")
    lines += [f"torchvision=={matching_torchvision(torch_version)}", f"monailabel=={MONAILABEL_VERSION}"]
    return lines, torch_version


def parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/form-data`` body: ``{name: (part headers, raw bytes)}``."""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    if not message.is_multipart():
        raise ValueError(f"not a multipart body (content type {content_type!r}).")
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition") or f"part{len(parts)}"
        parts[str(name)] = ({k: str(v) for k, v in part.items()}, part.get_payload(decode=True) or b"")
    return parts


def _multipart_body(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Response:
    """One HTTP exchange."""

    method: str
    url: str
    sent: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


@dataclass
class Transcript:
    """What the check did and saw, written as Markdown."""

    work: Path
    sections: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    passes: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)
    last_seconds: float = 0.0

    def add(self, text: str) -> None:
        self.sections.append(text.rstrip() + "\n")

    def check(self, ok: bool, what: str) -> bool:
        (self.passes if ok else self.failures).append(what)
        self.add(f"- {'PASS' if ok else 'FAIL'}: {what}")
        print(f"{'PASS' if ok else 'FAIL'}: {what}", flush=True)
        return ok

    def text(self, bundle_root: Path, venv: Path) -> str:
        body = "\n".join(self.sections)
        for path, name in ((self.work, "$WORK"), (venv, "$VENV"), (bundle_root, "$BUNDLE")):
            body = body.replace(str(path), name)
        return body


def _run(cmd: list[str], log: Path, transcript: Transcript, cwd: Path, env: dict | None = None, check=True) -> str:
    """Run a command, append its output to ``log``, add it (with its wall time) to the transcript."""
    shown = shlex.join(cmd)
    print(f"$ {shown}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    transcript.last_seconds = seconds
    with log.open("a") as f:
        f.write(f"$ {shown}\n{proc.stdout}{proc.stderr}\n[exit {proc.returncode}, {seconds:.1f} s]\n")
    transcript.add(f"```console\n$ {shown}\n```\nexit {proc.returncode}, {seconds:.1f} s")
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"`{shown}` failed with exit {proc.returncode} (full output in {log}):\n{tail}")
    return proc.stdout


def setup_environment(venv: Path, work: Path, transcript: Transcript, torch_index: str | None) -> dict[str, str]:
    """Create ``venv`` (if missing) and install MONAI Label there; returns the installed versions."""
    log = work / "setup.log"
    lines, torch_version = requirements_for_monailabel((BUNDLE_ROOT / "requirements.txt").read_text())
    reqs = work / "requirements-monailabel.txt"
    reqs.write_text(
        "# the bundle's requirements.txt with MONAI Label's limits, written by scripts.tools.monailabel_check\n"
        + "\n".join(lines)
        + "\n"
    )
    replaced = ", ".join(f"`{k}` by `{v}`" for k, v in REPLACED_PINS.items())
    transcript.add(
        f"## 1. Environment\n\n`{reqs.name}`: the bundle's `requirements.txt` with {replaced} (MONAI Label "
        "0.8.5 needs them through `pydicom-seg`), the torchvision of the pinned torch, and MONAI Label:\n"
    )
    transcript.add("```text\n" + "\n".join(lines) + "\n```")
    py = venv / "bin" / "python"
    if not py.exists():
        base = getattr(sys, "_base_executable", None) or sys.executable
        _run([base, "-m", "venv", str(venv)], log, transcript, cwd=work)
    cmd = [str(py), "-m", "pip", "install", "-q", "--progress-bar", "off", "-r", str(reqs)]
    if torch_index:
        cmd += ["--extra-index-url", torch_index]
    _run(cmd, log, transcript, cwd=work)
    transcript.numbers.append(f"environment: pip install {transcript.last_seconds:.0f} s")
    probe = "import torch; print(torch.__version__, torch.version.cuda)"
    torch_line = _run([str(py), "-c", probe], log, transcript, cwd=work).strip()
    vision = subprocess.run([str(py), "-c", "import torchvision.ops"], capture_output=True, text=True, cwd=work)
    versions: dict[str, str] = {}
    if vision.returncode != 0:
        error = (vision.stderr.strip().splitlines() or ["unknown error"])[-1]
        transcript.add(
            f"`import torchvision.ops` fails in this environment: `{error}`. The torchvision "
            f"{matching_torchvision(torch_version)} wheel the index offered is built for another torch variant "
            f"than the installed torch {torch_line.split()[0]} (CUDA: {torch_line.split()[-1]}); a matching build "
            "comes from a torch wheel index given with `--torch_index`. It is uninstalled here, so that an import "
            "of it fails cleanly: neither MONAI Label's server nor this adapter imports torchvision (MONAI Label's "
            "own BundleInferTask and SAM2 tasks do, and are not used)."
        )
        _run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], log, transcript, cwd=work)
        versions["torchvision"] = f"uninstalled ({error})"
    listed = json.loads(_run([str(py), "-m", "pip", "list", "--format", "json"], log, transcript, cwd=work))
    installed = {p["name"].lower(): p["version"] for p in listed}
    for name in (
        "monailabel",
        "monai",
        "torch",
        "torchvision",
        "numpy",
        "pydicom",
        "pydicom-seg",
        "fastapi",
        "uvicorn",
    ):
        versions.setdefault(name, installed.get(name, "not installed"))
    transcript.add(
        f"Installed ({len(installed)} packages in all; torch build `{torch_line}` as `torch.__version__` and "
        "`torch.version.cuda`):\n\n| package | version |\n|---|---|\n"
        + "\n".join(f"| {k} | {v} |" for k, v in versions.items())
    )
    return versions


def model_geometry(configs: str) -> tuple[int, float]:
    """``(roi_size, spacing)`` of the merged bundle configs (what the answer's shape must be)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / c.strip()) for c in configs.split(",") if c.strip()])
    return int(parser["roi_size"]), float(parser["spacing"])


def prepare_datastore(work: Path, roi: int, spacing: float, transcript: Transcript) -> dict[str, Any]:
    """Prepare the example, simulate its pairs and build the datastore; returns the cases used."""
    log = work / "prepare.log"
    data = work / "example"
    transcript.add("## 2. Example datastore\n")
    py = sys.executable
    prep = [py, "-m", "scripts.prepare", "--source", "example", "--out", str(data)]
    _run(prep + ["--spacing", f"{spacing:g}", "--roi", str(roi)], log, transcript, cwd=BUNDLE_ROOT)
    sim = [py, "-m", "scripts.simulate", "--data", str(data), "--angles", "[[0, 90]]", "--source", "isolated"]
    _run(sim, log, transcript, cwd=BUNDLE_ROOT)
    datalist = json.loads((data / "datalist.json").read_text())
    test, other = datalist["test"][0], (datalist.get("validation") or datalist["training"])[0]
    store = work / "datastore"
    if store.exists():
        shutil.rmtree(store)
    store.mkdir()
    ap, lat = (data / p for p in test["drr_png"])
    shutil.copyfile(ap, store / f"{test['id']}_ap.png")
    shutil.copyfile(lat, store / f"{test['id']}_lat.png")
    front, side = (data / p for p in other["drr_png"])
    shutil.copyfile(front, store / f"{other['id']}_frontal.png")
    shutil.copyfile(side, store / f"{other['id']}_side.png")
    sidecar = {
        "xray": [f"{other['id']}_frontal.png", f"{other['id']}_side.png"],
        "angles": [[0, 0], [90, 0]],
        "id": other["id"],
    }
    (store / f"{other['id']}_frontal.json").write_text(json.dumps(sidecar) + "\n")
    shutil.copyfile(ap, store / "lone_ap.png")
    # two full radiographs of the example's whole scan for the task spine, turning about the vertebrae's mean centre
    items = [it for key in ("training", "validation", "test") for it in datalist.get(key, [])]
    centre = [round(float(sum(it["centre_mm"][k] for it in items) / len(items)), 1) for k in range(3)]
    rad = work / "radiographs"
    sim_rad = [py, "-m", "scripts.simulate", "radiographs", "--ct", str(data / test["body"]), "--out", str(rad),
               "--isocentre", json.dumps(centre), "--overwrite", "True"]  # fmt: skip
    _run(sim_rad, log, transcript, cwd=BUNDLE_ROOT)
    shutil.copyfile(rad / "ap.dcm", store / "spine_ap.dcm")
    shutil.copyfile(rad / "lateral.dcm", store / "spine_lat.dcm")
    listing = "\n".join(sorted(p.name for p in store.iterdir()))
    transcript.add(
        f"Datastore (`$WORK/datastore`): the test vertebra {test['id']} by the naming convention, the "
        f"{'validation' if datalist.get('validation') else 'training'} vertebra {other['id']} by a sidecar JSON, "
        "an AP image without its lateral view, and the whole scan's AP and lateral full radiographs (DICOM, "
        "`python -m scripts.simulate radiographs`, isocentre at the vertebrae's mean centre "
        f"{centre} mm) for the task `spine`:\n\n```text\n" + listing + "\n```\n\n"
        f"`{other['id']}_frontal.json`:\n\n```json\n{json.dumps(sidecar)}\n```\n\n"
        f"The example scan ({test['id'].rsplit('_', 1)[0]}) is one of the training patients of "
        "`models/cpu/model.pt`, so the Dice below is on a training vertebra: it shows that the served "
        "reconstruction is the bundle's, not the model's accuracy on unseen patients (docs/README.md, Performance)."
    )
    return {"store": store, "test": test, "other": other, "data": data}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(method: str, url: str, fields: dict[str, str] | None = None, timeout: float = REQUEST_TIMEOUT_S):
    """Send one HTTP request (form fields as multipart) and return the :class:`Response`, errors included."""
    data, headers = None, {}
    if fields is not None:
        data, ctype = _multipart_body(fields)
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, head, body = r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        status, head, body = e.code, dict(e.headers.items()), e.read()
    return Response(method, url, fields or {}, status, head, body, time.perf_counter() - start)


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < SERVER_START_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the server exited with {proc.returncode} before answering; see {log}:\n" + log.read_text()[-3000:]
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the server did not answer {url} within {SERVER_START_TIMEOUT_S:.0f} s; see {log}.")


def _stop(proc: subprocess.Popen) -> int:
    """Stop the server (SIGINT to its own process group, then SIGKILL after 30 s)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return int(proc.returncode)


def _exchange_md(title: str, resp: Response, curl: str, extra: str = "") -> str:
    shown = {k: v for k, v in resp.headers.items() if k.lower() not in ("date",)}
    text = (
        f"### {title}\n\n```console\n$ {curl}\n```\n\nHTTP {resp.status}, {resp.seconds:.2f} s (client wall time)\n\n"
    )
    text += "Response headers:\n\n```text\n" + "\n".join(f"{k}: {v}" for k, v in shown.items()) + "\n```\n"
    return text + extra


def _dice(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / total) if total else 1.0


def _preview(volume_file: Path, inputs: list[Path], out: Path, title: str) -> None:
    """Inputs, central slices and maximum intensity projections of the returned volume (HU -1024..1500)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np
    from PIL import Image

    vol = np.asarray(nib.as_closest_canonical(nib.load(str(volume_file))).dataobj, dtype=np.float32)  # RAS
    cx, cy, cz = (s // 2 for s in vol.shape)
    # radiological display: superior (axial: anterior) up, the patient's right on the left, sagittal anterior left
    views = [
        ("coronal slice", vol[::-1, cy, :].T[::-1]),
        ("sagittal slice", vol[cx, ::-1, :].T[::-1]),
        ("axial slice", vol[::-1, :, cz].T[::-1]),
        ("coronal MIP", vol[::-1].max(axis=1).T[::-1]),
        ("sagittal MIP", vol[:, ::-1, :].max(axis=0).T[::-1]),
        ("axial MIP", vol[::-1].max(axis=2).T[::-1]),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    for ax, path, name in zip(axes[:, 0], inputs, ("input AP", "input lateral")):
        ax.imshow(np.asarray(Image.open(path)), cmap="gray")
        ax.set_title(f"{name}\n{path.name}", fontsize=9)
    for ax, (name, img) in zip(list(axes[0, 1:]) + list(axes[1, 1:]), views):
        ax.imshow(img, cmap="gray", vmin=-1024, vmax=1500)
        ax.set_title(f"answer: {name}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _bundle_files(root: Path) -> dict[str, float]:
    skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".venv")]
        for name in filenames:
            path = Path(dirpath) / name
            try:
                files[str(path.relative_to(root))] = path.stat().st_mtime
            except OSError:
                continue
    return files


def run_check(
    work: Path,
    venv: Path,
    configs: str = DEFAULT_CONFIGS,
    torch_index: str | None = None,
    skip_setup: bool = False,
    setup_only: bool = False,
    publish: Path | None = None,
) -> int:
    """Run the whole check (see the module docstring); returns 0 when every check passed."""
    work.mkdir(parents=True, exist_ok=True)
    transcript = Transcript(work)
    started = dt.datetime.now(dt.timezone.utc)
    transcript.add(
        "# MONAI Label adapter: server check transcript\n\n"
        f"Written by `python -m scripts.tools.monailabel_check` on {started:%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, no GPU used. Paths: `$BUNDLE` the bundle, `$WORK` the work "
        f"folder, `$VENV` the MONAI Label environment. Bundle configs of the task `ear`: `{configs}`; the task "
        "`spine` reconstructs with its default, the body model (`configs/inference.json,configs/cpu.json,"
        "configs/body_model.json`)."
    )
    if skip_setup:
        transcript.add("## 1. Environment\n\nReused as it was (`--skip_setup`).")
    else:
        setup_environment(venv, work, transcript, torch_index)
    if setup_only:
        (work / "transcript.md").write_text(transcript.text(BUNDLE_ROOT, venv))
        return 1 if transcript.failures else 0
    roi, spacing = model_geometry(configs)
    cases = prepare_datastore(work, roi, spacing, transcript)
    store, test, other = cases["store"], cases["test"], cases["other"]

    app_dir = work / "app"
    write_app_dir(app_dir)
    server_work = work / "server-work"
    server_work.mkdir(exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        "monailabel", "start_server", "--app", str(app_dir), "--studies", str(store),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "configs", configs, "--conf", "work_root", str(server_work),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv),
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ written into the bundle by the server
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "MONAI_LABEL_SESSION_PATH": str(work / "sessions"),
    }
    env.pop("PYTHONPATH", None)
    transcript.add(
        "## 3. Server\n\nThe app folder `$WORK/app` holds only the `main.py` that `python -m scripts.monailabel "
        "$WORK/app` writes; with `$VENV/bin` first on PATH (and `OMP_NUM_THREADS=1`, "
        f"`PYTHONDONTWRITEBYTECODE=1`):\n\n```console\n$ {shlex.join(cmd)}\n```"
    )
    before = _bundle_files(BUNDLE_ROOT)
    t0 = time.time()
    log = work / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    answer_file = None
    try:
        ready = _wait_for_server(f"{base}/info/", proc, log)
        transcript.add(f"The server answered `GET /info/` {ready:.1f} s after it was started (pid {proc.pid}).")
        transcript.numbers.append(f"server: first answer {ready:.1f} s after start")
        info = request("GET", f"{base}/info/")
        info_json = json.loads(info.body)
        transcript.add(
            "\n## 4. Requests\n\n"
            + _exchange_md("GET /info/", info, f"curl {base}/info/")
            + "\nModels in the answer:\n\n```json\n"
            + json.dumps(info_json.get("models"), indent=1)
            + "\n```"
        )
        transcript.check("ear" in info_json.get("models", {}), "/info/ lists the infer task `ear`")
        transcript.check("spine" in info_json.get("models", {}), "/info/ lists the infer task `spine`")

        # 1) naming convention, default answer: multipart (params JSON + the NIfTI volume)
        image_id = f"{test['id']}_ap"
        resp = request("POST", f"{base}/infer/ear?image={image_id}", {"params": "{}"})
        curl = f"curl -X POST '{base}/infer/ear?image={image_id}' -F 'params={{}}'"
        extra = ""
        params: dict[str, Any] = {}
        if resp.status == 200 and resp.headers.get("content-type", "").startswith("multipart/"):
            parts = parse_multipart(resp.body, resp.headers["content-type"])
            params = json.loads(parts["params"][1]) if "params" in parts else {}
            image_headers, image_bytes = parts.get("image", ({}, b""))
            answer_file = work / "answer_hu.nii.gz"
            answer_file.write_bytes(image_bytes)
            extra = (
                f"\nParts: {', '.join(f'`{k}` ({len(v[1])} bytes)' for k, v in parts.items())}; the `image` part's "
                f"headers: `{image_headers.get('Content-Disposition', '')}`.\n\n`params`:\n\n```json\n"
                + json.dumps(params, indent=1)
                + "\n```"
            )
        transcript.add(_exchange_md(f"Volume by the naming convention: image `{image_id}`", resp, curl, extra))
        transcript.check(resp.status == 200, f"infer {image_id}: HTTP 200")
        if answer_file is not None and answer_file.stat().st_size:
            import nibabel as nib
            import numpy as np

            img = nib.load(str(answer_file))
            vol = np.asarray(img.dataobj, dtype=np.float32)
            gt = np.asarray(nib.load(str(cases["data"] / test["gt"])).dataobj, dtype=np.float32)
            zooms = [float(z) for z in img.header.get_zooms()[:3]]
            dice = _dice(vol > -500, gt > -500) if gt.shape == vol.shape else float("nan")
            finite = bool(np.isfinite(vol).all())
            transcript.add(
                f"\nThe returned NIfTI: shape {list(vol.shape)}, spacing {zooms} mm, orientation "
                f"{''.join(nib.aff2axcodes(img.affine))}, dtype {img.get_data_dtype()}, HU min {vol.min():.1f}, "
                f"max {vol.max():.1f}, mean {vol.mean():.1f}; {int((vol > -500).sum())} voxels above -500 HU. "
                f"Dice at -500 HU against the vertebra's ground truth crop ({Path(test['gt']).name}): {dice:.3f}."
            )
            transcript.numbers.append(
                f"{image_id} (naming convention): HTTP {resp.status} in {resp.seconds:.2f} s (bundle run "
                f"{params.get('seconds', float('nan')):.2f} s), NIfTI {list(vol.shape)} at {zooms[0]:g} mm, "
                f"HU {vol.min():.1f} .. {vol.max():.1f}, Dice {dice:.3f} against the ground truth"
            )
            transcript.check(
                vol.shape == (roi,) * 3, f"the volume is {roi}^3 (the model's crop), got {list(vol.shape)}"
            )
            transcript.check(all(abs(z - spacing) < 1e-3 for z in zooms), f"its spacing is {spacing:g} mm")
            transcript.check(finite and -1100 <= vol.min() < -900, "HU values: finite, air near -1000 HU")
            transcript.check(vol.max() > 200, "HU values: bone above 200 HU present")
            transcript.check(dice > 0.5, f"Dice against the ground truth {dice:.3f} > 0.5")
            transcript.check(params.get("shape") == [roi] * 3, "params report the same shape")
            _preview(
                answer_file,
                [store / f"{test['id']}_ap.png", store / f"{test['id']}_lat.png"],
                work / "preview.png",
                f"MONAI Label answer to POST /infer/ear?image={image_id} (HU -1024..1500; Dice {dice:.3f} at -500 HU)",
            )
            transcript.add("\nPreview of the answer: [preview.png](preview.png)\n\n![preview](preview.png)")
        else:
            transcript.check(False, "the answer holds a NIfTI image part")

        # 2) sidecar JSON, the mesh as the answer's only file
        image_id = f"{other['id']}_frontal"
        fields = {"params": json.dumps({"result": "mesh"})}
        resp = request("POST", f"{base}/infer/ear?image={image_id}&output=image", fields)
        curl = (
            f"curl -X POST '{base}/infer/ear?image={image_id}&output=image' -F 'params={fields['params']}' -o mesh.stl"
        )
        extra, n_tri = "", -1
        if resp.status == 200 and len(resp.body) >= 84:
            n_tri = int.from_bytes(resp.body[80:84], "little")
            (work / "answer_mesh.stl").write_bytes(resp.body)
            extra = f"\nBody: {len(resp.body)} bytes, a binary STL of {n_tri} triangles (84 + 50 x {n_tri} bytes)."
        transcript.add(_exchange_md(f"Mesh by a sidecar JSON: image `{image_id}`", resp, curl, extra))
        transcript.numbers.append(
            f"{image_id} (sidecar, result mesh): HTTP {resp.status} in {resp.seconds:.2f} s, STL of {n_tri} triangles"
        )
        transcript.check(resp.status == 200, f"infer {image_id} (sidecar): HTTP 200")
        transcript.check(n_tri > 0 and len(resp.body) == 84 + 50 * n_tri, "the answer is a binary STL with triangles")

        # 3) a view without its partner: a clear 400
        resp = request("POST", f"{base}/infer/ear?image=lone_ap", {"params": "{}"})
        curl = f"curl -X POST '{base}/infer/ear?image=lone_ap' -F 'params={{}}'"
        body = resp.body.decode(errors="replace")
        transcript.add(_exchange_md("A view without its partner: image `lone_ap`", resp, curl, f"\nBody: `{body}`"))
        transcript.numbers.append(f"lone_ap (no partner): HTTP {resp.status}")
        transcript.check(resp.status == 400 and "lone_lat" in body, "missing partner: HTTP 400 naming lone_lat")

        # 4) the task spine: two full radiographs in, the label map of every vertebra and the spine report out
        resp = request("POST", f"{base}/infer/spine?image=spine_lat", {"params": "{}"})
        curl = f"curl -X POST '{base}/infer/spine?image=spine_lat' -F 'params={{}}'"
        extra, levels, report = "", [], {}
        if resp.status == 200 and resp.headers.get("content-type", "").startswith("multipart/"):
            import nibabel as nib
            import numpy as np

            parts = parse_multipart(resp.body, resp.headers["content-type"])
            report = json.loads(parts["params"][1]) if "params" in parts else {}
            labels_file = work / "answer_spine_labels.nii.gz"
            labels_file.write_bytes(parts.get("image", ({}, b""))[1])
            values = np.unique(np.asarray(nib.load(str(labels_file)).dataobj))
            levels = [int(v) for v in values if v != 0]
            found = report.get("vertebrae", {})
            extra = (
                f"\nParts: {', '.join(f'`{k}` ({len(v[1])} bytes)' for k, v in parts.items())}. The label map holds "
                f"the values {levels}; the report names {len(found)} vertebrae: "
                + ", ".join(f"{k} (confidence {v.get('confidence', float('nan')):.2f})" for k, v in found.items())
                + "."
            )
        transcript.add(_exchange_md("The whole spine: image `spine_lat` (task `spine`)", resp, curl, extra))
        found = report.get("vertebrae", {})
        transcript.numbers.append(
            f"spine_lat (task spine): HTTP {resp.status} in {resp.seconds:.2f} s, {len(found)} vertebrae "
            f"({', '.join(found)}), label values {levels}"
        )
        transcript.check(resp.status == 200, "infer spine_lat (task spine): HTTP 200")
        transcript.check(
            len(levels) >= 3 and len(levels) == len(found), "a label map of 3 or more vertebrae, as reported"
        )
        transcript.check(
            all(0.0 <= v.get("confidence", -1.0) <= 1.0 for v in found.values()), "each vertebra carries a confidence"
        )
    finally:
        code = _stop(proc)
    transcript.add(f"\n## 5. After the requests\n\nServer stopped with SIGINT (exit {code}).")
    leftovers = sorted(str(p.relative_to(server_work)) for p in server_work.rglob("*"))
    transcript.check(not leftovers, f"the server's work folder is empty again (left: {leftovers})")
    after = _bundle_files(BUNDLE_ROOT)
    changed = sorted(p for p, m in after.items() if p not in before or m != before[p] and m >= t0)
    ours = [p for p in changed if p.startswith(("outputs/", "scripts/monailabel/")) or test["id"] in p]
    transcript.add(
        f"Files under the bundle folder new or modified while the server ran: {len(changed)}"
        + (
            f" ({', '.join(changed[:20])}; edits by other processes in the shared tree are listed here too)"
            if changed
            else ""
        )
    )
    transcript.check(not ours, f"nothing written into the bundle's outputs/ or scripts/monailabel/ ({ours})")
    events = [ln for ln in log.read_text().splitlines() if "Infer Request" in ln or "scripts.monailabel" in ln]
    transcript.add("Server log, infer lines:\n\n```text\n" + "\n".join(ln[-400:] for ln in events[:12]) + "\n```")
    verdict = f"{len(transcript.passes)} passed, {len(transcript.failures)} failed"
    took = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    transcript.add(
        f"\n## Result\n\n{verdict} ({took:.0f} s in all).\n\n" + "\n".join(f"- {n}" for n in transcript.numbers)
    )
    (work / "transcript.md").write_text(transcript.text(BUNDLE_ROOT, venv))
    print(f"transcript: {work / 'transcript.md'}\n{verdict}", flush=True)
    if publish is not None:
        publish.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "transcript.md", publish / "transcript.md")
        if (work / "preview.png").exists():
            shutil.copyfile(work / "preview.png", publish / "preview.png")
        print(f"published to {publish}", flush=True)
    return 1 if transcript.failures else 0


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring and ``--help``."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.tools.monailabel_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--work", help="work folder for everything (default: a new temporary folder)")
    parser.add_argument("--venv", default=str(BUNDLE_ROOT / ".venv-monailabel"), help="MONAI Label environment")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="bundle config files, comma-separated")
    parser.add_argument("--torch_index", default=None, help="extra package index for torch/torchvision builds")
    parser.add_argument("--skip_setup", action="store_true", help="use --venv as it is")
    parser.add_argument("--setup_only", action="store_true", help="only make the environment")
    parser.add_argument("--publish", default=None, help="copy transcript.md and preview.png to this folder")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ear-monailabel-check-"))
    try:
        work = check_outside_bundle(work)
        return run_check(
            work,
            Path(args.venv).resolve(),
            configs=args.configs,
            torch_index=args.torch_index,
            skip_setup=args.skip_setup,
            setup_only=args.setup_only,
            publish=Path(args.publish).resolve() if args.publish else None,
        )
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
