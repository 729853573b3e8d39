"""A run's config of record and its attempts: what makes `python train.py resume=<run dir>` continue the
run exactly as it was.

Every start of a run directory is an *attempt*, recorded in `<run dir>/attempts/<NNN>/`:
`config.yaml` (the config the attempt ran with, interpolations kept, run name fixed), `overrides.yaml`
(its command line), `changes.yaml` (what it changed relative to the run's record) and `hydra.yaml`
(Hydra's view of it). The newest attempt's config is the run's **config of record**. Hydra rewrites
`.hydra/config.yaml` from the command line at every start; here it is put back to the config the attempt
actually runs with (and restored when an attempt is refused), so `.hydra/` always describes the run.

Resuming: the config of record is the base; only the overrides given on the command line are applied on
top — a `group=option` replaces that group's node, `key=value` sets the key, `~key` deletes it, a
`_global_` group (experiment=, debug=) sets the keys it changes. Every difference is listed. Differences
under data, the bundled-data settings, loss, sampler, model (optimizer and scheduler included), prompt or
seed change what the run is and are refused, naming the keys, unless `resume_allow_changes=true`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .hydra_app import parsed_override_value

log = logging.getLogger(__name__)

ATTEMPTS = "attempts"
#: Config roots whose change makes a resumed run another experiment (refused without resume_allow_changes).
PROTECTED = ("data", "bundled", "loss", "sampler", "model", "prompt", "seed")
#: Keys under those roots that say how batches are read, not what they hold (the batch sampler runs in the training
#: process, so workers change nothing in a batch): a resume may change them, e.g. after a DataLoader time-out.
READING_KEYS = ("data.num_workers", "data.pin_memory", "data.worker_timeout_s")
#: Keys that say how to start this attempt, not what the run is: taken from the command line, never compared.
ATTEMPT_KEYS = ("resume", "resume_allow_changes", "ckpt_path")
#: Resolved once, at the first attempt: the run's identity (a resumed run keeps its name and W&B group).
FROZEN_KEYS = ("run_name", "run_group")
_MISSING = "<absent>"


class ResumeRefused(ValueError):
    """Resuming with these overrides would change what the run is (or there is nothing to resume)."""


@dataclass
class Change:
    key: str
    saved: Any
    now: Any

    @property
    def protected(self) -> bool:
        return self.key.split(".")[0] in PROTECTED and self.key not in READING_KEYS

    def __str__(self) -> str:
        return f"{self.key}: {self.saved!r} → {self.now!r}"

    def as_dict(self) -> dict:
        return {"key": self.key, "saved": self.saved, "now": self.now}


@dataclass
class Attempt:
    """The config this attempt runs with and how it relates to the run's record."""

    config: DictConfig
    number: int
    resumed: bool                  # the directory already held a recorded run
    changes: list[Change] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)  # config-group choices (Hydra's runtime.choices)


def attempt_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete attempt records of a run directory, oldest first."""
    root = Path(run_dir) / ATTEMPTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.isdigit() and (p / "config.yaml").is_file()]
    return sorted(found, key=lambda p: int(p.name))


def _plain(cfg) -> Any:
    return OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → value for every leaf (lists are leaves: a list changes as a whole)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _delete(cfg: DictConfig, key: str) -> None:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if isinstance(parent, DictConfig) and leaf in parent:
        with_flag = OmegaConf.is_struct(parent)
        OmegaConf.set_struct(parent, False)
        del parent[leaf]
        OmegaConf.set_struct(parent, with_flag)


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose

    return compose(config_name=config_name, overrides=[o for o in overrides if not _is_hydra(o)])


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def apply_overrides(saved: DictConfig, composed: DictConfig, overrides: list[str], config_name: str,
                    groups: set[str]) -> DictConfig:
    """The config of record with this command line's overrides applied on top (see the module docstring).
    `composed` is what Hydra composed from the defaults and the same overrides; `groups` the config groups."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    effective = OmegaConf.create(_plain(saved))
    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        key = override.key_or_group
        if _is_hydra(override.input_line):
            continue
        if override.is_delete():
            _delete(effective, key.replace("/", "."))
            continue
        is_group = key in groups
        node_key = key.replace("/", ".")
        if is_group and override.package is None and OmegaConf.select(composed, node_key, default=None) is not None \
                and "/" not in key:
            _set(effective, node_key, _plain(composed[node_key]))
        elif is_group:  # a _global_ group (experiment=, debug=) or a packaged one: the keys it changes
            others = [o for o in overrides if o != override.input_line]
            without = _leaves(_plain(_compose(config_name, others)))
            for k, v in _leaves(_plain(composed)).items():
                if without.get(k, _MISSING) != v:
                    _set(effective, k, v)
        else:
            _set(effective, key, _plain(OmegaConf.select(composed, key, default=None)))
    for key in ATTEMPT_KEYS:
        if key in composed:
            _set(effective, key, _plain(composed[key]))
    return effective


def changes_between(saved: DictConfig, effective: DictConfig) -> list[Change]:
    a, b = _leaves(_plain(saved)), _leaves(_plain(effective))
    changes = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in ATTEMPT_KEYS:
            continue
        old, new = a.get(key, _MISSING), b.get(key, _MISSING)
        if old != new:
            changes.append(Change(key, old, new))
    return changes


def _freeze(cfg: DictConfig) -> DictConfig:
    """`cfg` (unresolved) with the run-identity keys resolved once."""
    out = OmegaConf.create(_plain(cfg))
    for key in FROZEN_KEYS:
        if key in cfg:
            _set(out, key, OmegaConf.select(cfg, key))
    return out


def recorded_choices(attempt_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((attempt_dir / "attempt.json").read_text()).get("choices") or {})
    except (OSError, ValueError):
        return {}


def resolve_attempt(cfg: DictConfig, run_dir: str | os.PathLike, *, config_name: str, overrides: list[str],
                    choices: dict[str, Any], announce: bool = True) -> Attempt:
    """The config this attempt runs with: `cfg` itself for a new run, else the run's record with the
    command line's overrides on top. Raises ResumeRefused for protected changes (unless allowed) and for
    `resume=` of a directory that holds no run. `choices`: Hydra's runtime.choices of this composition.
    `announce=False` (DDP children and other ranks, which read the record rank 0 just wrote): no logging."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run_dir = Path(run_dir)
    records = attempt_dirs(run_dir)
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    if not records:
        if cfg.get("resume") and not checkpoints:
            raise ResumeRefused(f"resume={cfg.resume}: no run to resume there (no {ATTEMPTS}/ record and no "
                                "checkpoint). Check the path: run directories are logs/<task>/runs/<time>_<name>")
        if checkpoints and announce:
            log.warning("run directory %s holds checkpoints but no %s/ record (made by an older embedlab): its "
                        "config cannot be restored; this command line's config is used and recorded", run_dir,
                        ATTEMPTS)
        return Attempt(_freeze(cfg), 1, resumed=bool(checkpoints), overrides=list(overrides), choices=dict(choices))
    latest = records[-1]
    saved = OmegaConf.load(latest / "config.yaml")
    before = recorded_choices(latest)
    # `group=<the run's own choice>` (pinned by pin_recorded_choices, or restated by the user) changes nothing.
    given = [o for o in overrides
             if not (o.partition("=")[0] in before and before[o.partition("=")[0]] == o.partition("=")[2])]
    effective = apply_overrides(saved, cfg, given, config_name, set(choices))
    now = dict(before)
    for override in OverridesParser.create().parse_overrides(given):
        if override.key_or_group in choices and not _is_hydra(override.input_line):
            now[override.key_or_group] = choices[override.key_or_group]
    changes = changes_between(saved, effective)
    protected = [c for c in changes if c.protected]
    if protected and not effective.get("resume_allow_changes", False):
        listed = "\n  ".join(str(c) for c in protected)
        raise ResumeRefused(
            f"resuming {run_dir} with these overrides would change what the run is (its recorded config: "
            f"{latest / 'config.yaml'}):\n  {listed}\nResume without them to continue the run as it was, add "
            "resume_allow_changes=true to continue it with the changed config, or start a new run")
    if changes and announce:
        log.info("resuming %s with %d change(s) to its recorded config:\n  %s", run_dir, len(changes),
                 "\n  ".join(str(c) for c in changes))
    elif announce:
        log.info("resuming %s with its recorded config (%s)", run_dir, latest / "config.yaml")
    OmegaConf.set_struct(effective, True)
    return Attempt(effective, int(latest.name) + 1, resumed=True, changes=changes, overrides=given, choices=now)


def pin_recorded_choices(argv: list[str]) -> list[str]:
    """Before Hydra composes a resumed run's command line: put the run's recorded config-group choices
    (`loss=hardness_weighted`, …) in front of the user's overrides, so that keys of the run's config can be
    overridden (`resume=<run> loss.alpha=3` composes although the default loss has no alpha). The user's
    own group overrides win; resolve_attempt drops the pinned ones again."""
    run_dir = None
    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key in ("resume", "hydra.run.dir") and value and value != "null":
            parsed = parsed_override_value(arg)
            run_dir = Path(parsed if isinstance(parsed, str) else value).expanduser()
    records = attempt_dirs(run_dir) if run_dir is not None else []
    if not records:
        return argv
    given = {a.partition("=")[0].lstrip("+~") for a in argv[1:] if "=" in a and not a.startswith("-")}
    pinned = [f"{group}={choice}" for group, choice in recorded_choices(records[-1]).items()
              if choice is not None and not group.startswith("hydra") and group not in given]
    return [argv[0], *pinned, *argv[1:]]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_attempt(run_dir: str | os.PathLike, attempt: Attempt, hydra_dir: str | os.PathLike | None) -> Path:
    """Write attempts/<NNN>/ (atomically: readers on other ranks see a complete record or none) and put
    the attempt's config into Hydra's `.hydra/config.yaml`."""
    root = Path(run_dir) / ATTEMPTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{attempt.number:03d}"
    tmp = root / f".{attempt.number:03d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    config_yaml = OmegaConf.to_yaml(attempt.config)
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(attempt.overrides)))
    (tmp / "changes.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create([c.as_dict() for c in attempt.changes])))
    (tmp / "attempt.json").write_text(json.dumps({
        "attempt": attempt.number, "resumed": attempt.resumed, "choices": attempt.choices,
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "command": sys.argv}, indent=1) + "\n")
    if hydra_dir is not None and (Path(hydra_dir) / "hydra.yaml").is_file():
        shutil.copyfile(Path(hydra_dir) / "hydra.yaml", tmp / "hydra.yaml")
    if final.exists():  # a record of the same number left by a refused or crashed start
        shutil.rmtree(final)
    os.replace(tmp, final)
    if hydra_dir is not None and Path(hydra_dir).is_dir():
        _atomic_write(Path(hydra_dir) / "config.yaml", config_yaml)
    return final


def restore_hydra_files(run_dir: str | os.PathLike, hydra_dir: str | os.PathLike | None) -> None:
    """After a refused start: put the newest recorded attempt's files back into `.hydra/` (Hydra wrote the
    refused command line's there before the run could refuse it)."""
    records = attempt_dirs(run_dir)
    if not records or hydra_dir is None or not Path(hydra_dir).is_dir():
        return
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        src = records[-1] / name
        if src.is_file():
            _atomic_write(Path(hydra_dir) / name, src.read_text())


def lenient_container(cfg) -> dict:
    """A saved Hydra config as plain containers, resolving what resolves outside the run (`${hydra:…}` does not:
    such values stay as their raw interpolation strings)."""
    def walk(node):
        if isinstance(node, DictConfig):
            out = {}
            for key in node.keys():
                try:
                    value = node[key]
                except Exception:
                    value = node._get_node(key)._value()
                out[str(key)] = walk(value)
            return out
        if isinstance(node, ListConfig):
            out = []
            for i in range(len(node)):
                try:
                    value = node[i]
                except Exception:
                    value = node._get_node(i)._value()
                out.append(walk(value))
            return out
        return node

    return walk(cfg)


def load_run_config(run_dir: Path):
    """A run's saved `.hydra/config.yaml`, with its `${hydra:…}` interpolations pointed at the run's own
    `.hydra/hydra.yaml` (the working directory the paths derive from, for instance), so that they resolve outside
    the Hydra app that wrote them. `${embedlab_cwd:}` (paths.root_dir) is the run's `hydra.runtime.cwd` there too,
    not the directory of the process reading it."""
    text = (run_dir / ".hydra" / "config.yaml").read_text()
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return OmegaConf.create(text)
    cfg = OmegaConf.create(text.replace("${hydra:", "${hydra.").replace("${embedlab_cwd:}", "${hydra.runtime.cwd}"))
    runtime = OmegaConf.load(hydra_file)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra = runtime.hydra
    return cfg
