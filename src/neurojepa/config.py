"""Typed configs with YAML files and ``key=value`` command-line overrides (OmegaConf structured configs).

Each phase declares its options as a dataclass next to the code that uses them (defaults in one place).
:func:`load_config` merges, in order, the dataclass defaults, an optional YAML file and ``key=value``
overrides, and checks names and types: a typo gets one line naming the bad key and the closest valid one.
Every run saves its resolved config with :func:`save_config`; :func:`config_hash` fingerprints it so a
pipeline stage can tell whether its inputs changed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import InputError, atomic_path

T = TypeVar("T")


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        name = f"{prefix}{k}"
        keys.append(name)
        if OmegaConf.is_dict(v):
            keys.extend(_all_keys(v, name + "."))
    return keys


def _closest(bad: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(bad, valid, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def load_config(schema: type[T], file: str | Path | None = None, overrides: Sequence[str] = (), *,
                where: str = "config") -> T:
    """Return a validated config object of type ``schema`` (a dataclass).

    file: optional YAML with a subset of the keys; overrides: ``["key=value", "section.key=value", ...]``.
    Raises :class:`InputError` for an unknown key (naming the closest valid one), a wrong type or a bad YAML.
    """
    base = OmegaConf.structured(schema)
    valid = _all_keys(base)
    layers = []
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as err:  # yaml errors come in many classes
            raise InputError(path, f"not a valid YAML config ({type(err).__name__})") from None
    for item in overrides:
        if "=" not in item:
            raise InputError(where, f"override '{item}' is not of the form key=value")
    if overrides:
        try:
            layers.append((where, OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as err:
            raise InputError(where, f"bad override: {err}") from None
    cfg = base
    for source, layer in layers:
        for key in _all_keys(layer):
            if key not in valid:
                raise InputError(source, f"unknown config key '{key}'{_closest(key, valid)}")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as err:
            key = getattr(err, "full_key", None) or "?"
            msg = str(getattr(err, "msg", err)).splitlines()[0]
            raise InputError(source, f"bad value for '{key}': {msg}") from None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict:
    """A plain, JSON-able dict of a config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_hash(cfg: Any) -> str:
    """A short, stable fingerprint of a config (sha256 of its sorted JSON)."""
    blob = json.dumps(to_dict(cfg) if not isinstance(cfg, dict) else cfg, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return path


def read_config(schema: type[T], path: str | Path) -> T:
    """Read back a config saved by :func:`save_config`."""
    return load_config(schema, path)
