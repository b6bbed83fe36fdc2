# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The bundle's metadata and layout satisfy MONAI's bundle tools."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import monai
import numpy
import pytest
import torch

#: The MONAI model zoo's official metadata schema (the URL in the ``schema`` key of configs/metadata.json):
#: its required top-level keys and tensor fields with their JSON types, as meta_schema_20240725.json states
#: them. The local subset schema must require at least these, with the same types.
OFFICIAL_SCHEMA = "meta_schema_20240725.json"
OFFICIAL_REQUIRED = {
    "schema": "string",
    "version": "string",
    "monai_version": "string",
    "pytorch_version": "string",
    "numpy_version": "string",
    "required_packages_version": "object",
    "task": "string",
    "description": "string",
    "authors": "string",
    "copyright": "string",
}
OFFICIAL_TENSOR_REQUIRED = {
    "type": "string",
    "format": "string",
    "num_channels": "integer",
    "spatial_shape": "array",
    "dtype": "string",
    "value_range": "array",
}
SUBSET_SCHEMA = "configs/schema/meta_schema_20240725_subset.json"


def _meta(bundle_root) -> dict:
    return json.loads((bundle_root / "configs" / "metadata.json").read_text())


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


# slow: covered by tests/test_bundle_api.py::test_monai_bundle_commands_from_another_folder (verify_metadata of
# configs/metadata.json against the same schema, from another folder)
@pytest.mark.slow
def test_verify_metadata_against_kept_schema(bundle_root):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_metadata",
        "--meta_file",
        str(bundle_root / "configs" / "metadata.json"),
        "--filepath",
        str(bundle_root / SUBSET_SCHEMA),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle_root, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "metadata is verified with no error" in res.stdout + res.stderr


def test_subset_schema_requires_what_the_official_schema_requires(bundle_root):
    subset = json.loads((bundle_root / SUBSET_SCHEMA).read_text())
    meta = _meta(bundle_root)
    assert meta["schema"].endswith("/" + OFFICIAL_SCHEMA), "the metadata names the official schema by its URL"
    missing = set(OFFICIAL_REQUIRED) | {"network_data_format"}
    missing -= set(subset["required"])
    assert not missing, f"{SUBSET_SCHEMA} must require {sorted(missing)} as {OFFICIAL_SCHEMA} does"
    for key, json_type in OFFICIAL_REQUIRED.items():
        assert subset["properties"][key]["type"] == json_type, key
    tensor = subset["definitions"]["tensor"]
    assert set(OFFICIAL_TENSOR_REQUIRED) <= set(tensor["required"])
    for key, json_type in OFFICIAL_TENSOR_REQUIRED.items():
        assert tensor["properties"][key]["type"] == json_type, key
    io = subset["definitions"]["network_io"]
    assert set(io["required"]) >= {"inputs", "outputs"}


def test_version_matches_pyproject_and_changelog(bundle_root):
    meta = _meta(bundle_root)
    # pyproject.toml's [project] version (tomllib is Python 3.11+, the bundle supports 3.10)
    found = re.search(
        r'^\[project\][^\[]*?^version = "([^"]+)"', (bundle_root / "pyproject.toml").read_text(), re.M | re.S
    )
    assert found, "pyproject.toml has no [project] version"
    latest = max(meta["changelog"], key=_version_key)
    assert meta["version"] == found.group(1), "configs/metadata.json and pyproject.toml give other versions"
    assert meta["version"] == latest, f"version {meta['version']} is not the latest changelog entry ({latest})"
    assert next(iter(meta["changelog"])) == latest, "the changelog lists the newest version first"


def test_required_packages_match_the_pinned_requirements(bundle_root):
    pins = dict(
        re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        for line in (bundle_root / "requirements.txt").read_text().splitlines()
        if re.match(r"^[A-Za-z0-9_.-]+==", line)
    )
    meta = _meta(bundle_root)
    assert meta["monai_version"] == pins.pop("monai")
    assert meta["pytorch_version"] == pins.pop("torch")
    assert meta["numpy_version"] == pins.pop("numpy")
    assert meta["required_packages_version"] == pins, "required_packages_version must list requirements.txt's pins"


def test_supported_apps_are_shipped(bundle_root):
    from scripts.tools.monailabel_check import MONAILABEL_VERSION

    apps = _meta(bundle_root)["supported_apps"]
    assert apps == {"monai-label": MONAILABEL_VERSION}, "MONAI Label through scripts/monailabel, the tested version"
    assert (bundle_root / "scripts" / "monailabel" / "app.py").is_file()


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_eval_metrics_are_the_measured_numbers(bundle_root):
    """``eval_metrics`` repeats the committed test results (docs/README.md, Performance) at their printed precision."""
    metrics = _meta(bundle_root)["eval_metrics"]
    results = bundle_root / "docs" / "results"
    cpu = next(
        r
        for r in _csv_rows(results / "cpu_models_test_summary.csv")
        if (r["variant"], r["group"]) == ("new_cpu", "all")
    )
    expected = {
        "cpu_model_unseen_patients_dice": round(float(cpu["dice_mean"]), 3),
        "cpu_model_unseen_patients_hd95_mm": round(float(cpu["hd95_mean"]), 2),
        "cpu_model_unseen_patients_assd_mm": round(float(cpu["assd_mean"]), 2),
        "cpu_model_unseen_patients_psnr_db": round(float(cpu["psnr_mean"]), 2),
        "cpu_model_unseen_patients_ssim": round(float(cpu["ssim_mean"]), 2),
    }
    paper = next(
        r
        for r in _csv_rows(results / "paper_models_test_summary.csv")
        if (r["variant"], r["group"]) == ("new_paper", "all")
    )
    expected["paper_size_model_unseen_patients_dice"] = round(float(paper["dice_mean"]), 3)
    expected["paper_size_model_unseen_patients_hd95_mm"] = round(float(paper["hd95_mean"]), 2)
    fix = "eval_metrics must be the numbers of docs/results; after re-evaluating a model update both"
    assert metrics == pytest.approx(expected, abs=1e-9), fix


def test_metadata_versions_match_installed(bundle_root):
    meta = _meta(bundle_root)
    assert meta["version"] in meta["changelog"], "the current version needs a changelog entry"
    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"] == numpy.__version__
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 1


def test_layout(bundle_root):
    for name in ["LICENSE", "README.md", "large_files.yml", "configs/logging.conf", "docs/README.md"]:
        assert (bundle_root / name).is_file(), name
    assert "Apache License" in (bundle_root / "LICENSE").read_text()
    card = (bundle_root / "docs" / "README.md").read_text()
    for section in ["Model Description", "Data", "Preprocessing", "Performance", "MONAI Bundle Commands"]:
        assert f"## {section}" in card


def test_download_large_files_reads_the_list(bundle_root):
    """`monai.bundle download_large_files` parses large_files.yml (it needs PyYAML, a pinned requirement)."""
    cmd = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle_root)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle_root, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_large_files_list_every_weight_file_with_its_hash(bundle_root):
    import hashlib

    import yaml

    listed = {e["path"]: e for e in yaml.safe_load((bundle_root / "large_files.yml").read_text())["large_files"]}
    shipped = [p for name in ("model.pt", "model.ts") for p in (bundle_root / "models").rglob(name)]
    weights = {str(p.relative_to(bundle_root)) for p in shipped}  # checkpoint_last.pt of a local run is not shipped
    assert set(listed) == weights, "every shipped weight file is listed, and only those"
    assert {"models/model.pt", "models/model.ts", "models/cpu/model.pt", "models/cpu/model.ts"} <= weights
    for path, entry in listed.items():
        assert entry["hash_type"] == "sha256"
        assert entry["url"] == "", f"{path}: the weight files are committed in git, not published elsewhere"
        actual = hashlib.sha256((bundle_root / path).read_bytes()).hexdigest()
        assert actual == entry["hash_val"], f"{path} has sha256 {actual}: put it into large_files.yml"


def test_zoo_check_reads_the_format_tools_from_the_zoo_requirements():
    from scripts.tools.zoo_check import ZooCheckError, format_tool_requirements

    text = "# dev\nflake8>=3.8.1\nflake8-bugbear\npylint!=2.13  # x\nblack\nisort\nmonai>=1.2.0\n"
    assert format_tool_requirements(text) == ["flake8>=3.8.1", "flake8-bugbear", "black", "isort"]
    with pytest.raises(ZooCheckError, match="model-zoo checkout"):
        format_tool_requirements("monai\n")


def test_zoo_check_refuses_a_folder_that_is_no_zoo_checkout(tmp_path):
    from scripts.tools.zoo_check import ZooCheckError, run_zoo_check

    with pytest.raises(ZooCheckError, match="ci/verify_bundle.py"):
        run_zoo_check(tmp_path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zoo_check_provides_monai_properties_where_the_zoo_has_none(bundle_root, tmp_path):
    from scripts.tools.zoo_check import provide_properties

    zoo, copy = tmp_path / "zoo", tmp_path / "copy"
    zoo.mkdir()
    (copy / "models" / "b" / "configs").mkdir(parents=True)
    (copy / "models" / "b" / "configs" / "metadata.json").write_text(json.dumps(_meta(bundle_root)))
    stage = provide_properties(zoo, copy, "b")
    assert stage.passed and "monai.bundle.properties" in stage.output
    namespace: dict = {}
    exec((copy / "monai-label" / "bundle_properties.py").read_text(), namespace)
    assert "bundle_root" in namespace["InferProperties"] and "version" in namespace["MetaProperties"]
    (copy / "models" / "b" / "configs" / "metadata.json").write_text(json.dumps({"supported_apps": {}}))
    assert not provide_properties(zoo, copy, "b").passed, "no app, no property check: the step fails"


def test_zoo_transcript_records_a_passing_full_run(bundle_root):
    text = (bundle_root / "docs" / "model-zoo" / "verify.md").read_text()
    assert "Result: **PASS**" in text
    for stage in ("environment", "copy", "isort", "black", "flake8", "schema", "properties", "verify_bundle"):
        assert f"| {stage} | pass (exit 0) |" in text, stage
    assert "ci/verify_bundle.py -b ear_vertebra_reconstruction -p models -m full" in text
    assert "successfully checked properties." in text and "Provided TorchScript module is verified correctly." in text
