"""The run folder: config snapshots and what counts as a changed config on resume."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from clipcond.training.diffusion.config import TrainDiffusionConfig
from clipcond.training.run_folder import CONFIG_SNAPSHOT, prepare_output_dir


def test_a_snapshot_from_before_a_new_field_resumes_while_the_field_keeps_its_default(tmp_path):
    config = TrainDiffusionConfig(text_encoder="clip", unet={}, output_dir=str(tmp_path / "run"))
    prepare_output_dir(config, resume=False)
    snapshot = tmp_path / "run" / CONFIG_SNAPSHOT
    older = yaml.safe_load(snapshot.read_text())
    for added in ("adapter_lora", "vae", "t5_encoder"):
        del older[added]
    snapshot.write_text(yaml.safe_dump(older))
    assert prepare_output_dir(config, resume=True) == tmp_path / "run"
    snapshot.write_text(yaml.safe_dump(older))
    with pytest.raises(ValueError, match=r"config changed \(vae\)"):
        prepare_output_dir(dataclasses.replace(config, vae="somewhere"), resume=True)
    with pytest.raises(ValueError, match=r"config changed \(lr\)"):
        prepare_output_dir(dataclasses.replace(config, lr=0.5), resume=True)
    with pytest.raises(ValueError, match="--resume"):
        prepare_output_dir(config, resume=False)
