# Copyright (c) EAR bundle contributors. Licensed under the Apache License, Version 2.0.
"""The shipped TorchScript models (``model.ts``) compute what the checkpoints beside them (``model.pt``) compute.

A ``model.pt`` replaced without exporting ``model.ts`` again fails here; the export is one command
(docs/README.md, MONAI Bundle Commands, export TorchScript).
"""

from __future__ import annotations

import monai
import pytest
import torch
from monai.bundle import ConfigParser
from scripts.networks.model_info import load_state_dict_file, read_model_info
from tests.conftest import BUNDLE_ROOT

#: (folder under models/, config files that define its network_def)
MODELS = [
    ("models", ["configs/inference.json"]),
    ("models/cpu", ["configs/inference.json", "configs/cpu.json"]),
    ("models/body", ["configs/inference.json", "configs/cpu.json", "configs/body_model.json"]),
]


def _export_command(folder: str, configs: list[str]) -> str:
    config_arg = configs[0] if len(configs) == 1 else "\"['" + "','".join(configs) + "']\""
    return (
        f"python -m monai.bundle ckpt_export network_def --filepath {folder}/model.ts --ckpt_file {folder}/model.pt "
        f"--meta_file configs/metadata.json --config_file {config_arg}"
    )


def _eager_network(configs: list[str], folder: str) -> torch.nn.Module:
    """``network_def`` of the configs with the weights (and model-info buffers) of ``<folder>/model.pt``."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE_ROOT / c) for c in configs])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(load_state_dict_file(BUNDLE_ROOT / folder / "model.pt"), strict=True)
    return net.eval()


@pytest.mark.parametrize(("folder", "configs"), MODELS, ids=[m[0] for m in MODELS])
def test_model_ts_computes_what_model_pt_computes(folder, configs):
    ts_file = BUNDLE_ROOT / folder / "model.ts"
    assert ts_file.is_file(), f"{folder}/model.ts is missing; export it: {_export_command(folder, configs)}"
    # as a user loads it: monai.bundle.load with load_ts_module=True (net, metadata, extra files)
    ts_net, meta, extra = monai.bundle.load(
        name=BUNDLE_ROOT.name,
        bundle_dir=str(BUNDLE_ROOT.parent),
        model_file=f"{folder}/model.ts",
        load_ts_module=True,
        device="cpu",
        config_files=["inference.json"],
    )
    assert isinstance(ts_net, torch.jit.ScriptModule)
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2
    assert "inference.json" in extra

    eager = _eager_network(configs, folder)
    fix = f"{folder}/model.ts does not match {folder}/model.pt; export it again: {_export_command(folder, configs)}"
    assert read_model_info(ts_net) == read_model_info(eager), fix
    ts_state, eager_state = ts_net.state_dict(), eager.state_dict()
    assert set(ts_state) == set(eager_state), fix
    for name, value in eager_state.items():
        assert torch.equal(ts_state[name], value), f"{name}: {fix}"

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 32, 32, 32, generator=generator)
    with torch.no_grad():
        expected = eager(x)
        got = ts_net.eval()(x)
    assert got.shape == expected.shape == (1, 1, 32, 32, 32)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=fix)
