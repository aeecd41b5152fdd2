"""Typed configs: defaults, YAML files, key=value overrides, and one-line errors for typos and wrong types."""

from dataclasses import dataclass, field

import pytest

from neurojepa.config import config_hash, load_config, read_config, save_config
from neurojepa.errors import InputError


@dataclass
class Optim:
    lr: float = 1e-3
    steps: int = 100


@dataclass
class Run:
    optim: Optim = field(default_factory=Optim)
    name: str = "demo"
    states: list[str] = field(default_factory=list)


def test_overrides_and_file_merge_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\nname: fromfile\n")
    cfg = load_config(Run, f, ["optim.steps=7", "name=cli", "states=[active]"])
    assert isinstance(cfg, Run) and isinstance(cfg.optim, Optim)
    assert (cfg.optim.lr, cfg.optim.steps, cfg.name, cfg.states) == (0.5, 7, "cli", ["active"])


def test_typo_names_the_closest_key():
    with pytest.raises(InputError, match=r"unknown config key 'optim.stpes' \(did you mean 'optim.steps'\?\)"):
        load_config(Run, overrides=["optim.stpes=3"])


def test_typo_in_file_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("nmae: x\n")
    with pytest.raises(InputError) as err:
        load_config(Run, f)
    assert str(f) in str(err.value) and "'name'" in str(err.value)


def test_wrong_type_is_one_line():
    with pytest.raises(InputError) as err:
        load_config(Run, overrides=["optim.steps=many"])
    assert "optim.steps" in str(err.value) and "\n" not in str(err.value)


def test_saved_config_reads_back_identically_and_hash_tracks_changes(tmp_path):
    cfg = load_config(Run, overrides=["optim.lr=0.25"])
    path = save_config(cfg, tmp_path / "config.yaml")
    again = read_config(Run, path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(Run, overrides=["optim.lr=0.3"])) != config_hash(cfg)
