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
from typing import Any, Mapping, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
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
    Raises :class:`InputError` for an unknown key (naming the closest valid one), a wrong type, a value out of the
    schema's range (its ``__post_init__`` raising ValueError) or a bad YAML.
    """
    base = OmegaConf.structured(schema)
    valid = _all_keys(base)
    layers = []
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise InputError(path, "config file not found")
        try:
            layer = OmegaConf.load(path)
        except Exception as err:  # yaml errors come in many classes
            raise InputError(path, f"not a valid YAML config ({type(err).__name__})") from None
        if not isinstance(layer, DictConfig):
            raise InputError(path, "not a YAML config: expected a mapping of config keys")
        layers.append((str(path), layer))
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
                shown = key if len(key) <= 60 else key[:57] + "..."  # a stray text file: one short line
                raise InputError(source, f"unknown config key '{shown}'{_closest(key, valid)}")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as err:
            key = getattr(err, "full_key", None) or "?"
            msg = str(getattr(err, "msg", err)).splitlines()[0]
            raise InputError(source, f"bad value for '{key}': {msg}") from None
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except ValueError as err:  # a schema's own range check (__post_init__)
        raise InputError(where if not layers else layers[-1][0], str(err)) from None


def as_overrides(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` overrides for :func:`load_config` from Python keyword options, where dotted keys
    (``{"train.lr": 1e-3}``) and nested dicts (``{"train": {"lr": 1e-3}}``) mean the same. Values go through JSON,
    so strings, numbers, booleans, None and lists keep their types."""
    out: list[str] = []
    for key, value in options.items():
        if isinstance(value, Mapping):
            out += as_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


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


def describe(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every option of a config dataclass as ``(dotted key, default, meaning)``, recursing into sections.

    The meaning is the ``# comment`` on the field's line in the dataclass source (the one place defaults and
    their explanations live), so the reference in docs/config.md is generated, never retyped.
    """
    import dataclasses
    import inspect
    import re

    comments: dict[str, str] = {}
    for klass in reversed(schema.__mro__):
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^=\n]+=[^\n#]*#\s*(.+)$", src, flags=re.M):
            comments[m.group(1)] = m.group(2).strip()
        doc = inspect.getdoc(klass) or ""
        comments.setdefault("__doc__", doc.splitlines()[0] if doc else "")
    rows: list[tuple[str, str, str]] = []
    defaults = schema()
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            doc = inspect.getdoc(type(value)) or ""
            if doc.startswith(type(value).__name__ + "("):  # dataclass's generated signature, not a description
                doc = ""
            rows.append((key, "(section)", comments.get(f.name, "") or doc.split("\n")[0]))
            rows.extend(describe(type(value), key + "."))
        else:
            rows.append((key, json.dumps(value, default=str), comments.get(f.name, "")))
    return rows


def markdown_reference(schema: type, title: str) -> str:
    """A Markdown table of every option (see :func:`describe`)."""
    lines = [f"# {title}", "", "Generated by `neurojepa config --markdown` from the config dataclasses; do not edit by hand.",
             "", "| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, meaning in describe(schema):
        lines.append(f"| `{key}` | `{default}` | {meaning.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
