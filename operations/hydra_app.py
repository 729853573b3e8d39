"""What every Hydra entry point shares: resolvers for run names, run directories and W&B groups (importing this
module registers them), composing a config outside an app, rank detection before Lightning starts, instantiation
of loggers/callbacks, resume commands, and silencing of known, harmless log noise."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import sys
import uuid
import warnings
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .config_types import ConfigTypeError, check_config_types

log = logging.getLogger("embedlab")

#: Overrides that configure where/how a job runs rather than what it trains: left out of run names.
_NAME_SKIP_PREFIXES = ("hydra.", "hydra/", "paths.", "bundled.", "callbacks.", "logger", "trainer.enable_progress_bar",
                       "trainer.log_every_n_steps", "evaluate_", "save_embedder", "eval.", "eval_data.max_rows",
                       "eval_data.online",
                       "resume", "ckpt_path", "embedder_dir", "devices", "device")
#: A run directory's name ends with `<time>_<run name>`; the time prefix of a source run is dropped in names
#: derived from it (the evaluate run's own directory has its own time).
_GENERIC_DIRS = {"model", "models", "weights", "checkpoint", "checkpoints", "snapshot", "hf", "embedder"}
_TIME_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_")


#: Characters a run directory's name keeps: a name needs no quoting in a shell or in a Hydra override
#: (`resume=<run dir>` pastes bare). Anything else becomes "_"; `key=value` is written `key-value`.
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _name_part(item: str, skip_groups: tuple[str, ...] = ()) -> str | None:
    """One override as it appears in a run name, or None when it says nothing about what ran: infrastructure
    keys, path-valued overrides (a '/' would nest directories) and group choices already in the name."""
    key, _, value = item.partition("=")
    bare = key.lstrip("+~")
    if "/" in value or bare.startswith(_NAME_SKIP_PREFIXES) or bare in skip_groups:
        return None
    return item.lstrip("+")


def safe_name(text: str) -> str:
    """`text` with every run of characters that a shell or a Hydra override would need quoted replaced by "_"."""
    return _UNSAFE.sub("_", str(text)).strip("_") or "_"


def join_overrides(parts: list[str], max_len: int) -> str:
    """Overrides in a short, stable, paste-safe form: `loss.alpha=9`, `seed=2` → `loss.alpha-9_seed-2`. When
    characters had to be replaced (`data.subsets=[A,B]` → `data.subsets-A_B`) or the name is cut to `max_len`, a
    6-character digest of the exact overrides keeps different settings apart. The exact list is in the run's
    .hydra/overrides.yaml."""
    readable = []
    for part in parts:
        key, sep, value = part.partition("=")
        readable.append(safe_name(key) + ("-" + safe_name(value) if sep and value else "-" if sep else ""))
    name = "_".join(readable)
    exact = "_".join(p.replace("=", "-", 1) for p in parts)
    if name != exact or len(name) > max_len:
        digest = hashlib.sha1("\0".join(parts).encode()).hexdigest()[:6]
        name = name[: max(0, max_len - 7)].rstrip("_") + "_" + digest
    return name


def short_overrides(override_dirname: str, max_len: int = 120) -> str:
    """A multirun job's directory name from its overrides (infrastructure keys and path-valued overrides dropped;
    `join_overrides`' paste-safe form). `override_dirname` (Hydra's, comma-separated) is used outside a Hydra job."""
    items = task_overrides() or [i for i in str(override_dirname).split(",") if i]
    kept = [p for p in (_name_part(item) for item in items) if p]
    return join_overrides(kept, max_len) if kept else "job"


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _run_name(prefix: str, named_groups: str = "", max_len: int = 150) -> str:
    """`prefix` (the model/loss/sampler choices) plus every command-line override that changes what runs
    (`loss.alpha=9`, `seed=2`, `trainer=ddp_cpu` → `…_loss.alpha-9_seed-2_trainer-ddp_cpu`), so runs of different
    settings never share a name; paste-safe (`join_overrides`). `named_groups` ("model/loss/sampler"): group
    choices already spelled in `prefix`."""
    skip = tuple(g for g in str(named_groups).split("/") if g)
    parts = [p for p in (_name_part(o, skip) for o in task_overrides()) if p]
    prefix = safe_name(prefix)
    if not parts:
        return prefix[:max_len]
    return prefix + "_" + join_overrides(parts, max(8, max_len - len(prefix) - 1))


def scored_name(embedder_dir: str | None, ckpt_path: str | None, model_choice: str | None,
                model_path: str | None = None) -> str:
    """What an evaluation (or mining) run scores, for its run name: the saved Embedder's run, the checkpoint's
    run and file, or the model config (and the directory/hub id it loads when model.path was given)."""
    if embedder_dir:
        p = Path(str(embedder_dir).rstrip("/"))
        source = p.parent.name if p.name == "embedder" else p.name
        return "embedder-" + _TIME_PREFIX.sub("", source)
    if ckpt_path:
        p = Path(str(ckpt_path).rstrip("/"))
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return f"ckpt-{_TIME_PREFIX.sub('', run.name)}-{p.stem}"
    name = str(model_choice)
    if model_path and any(o.lstrip("+").startswith("model.path=") for o in task_overrides()):
        p = Path(str(model_path).rstrip("/"))
        # A generic last part (…/all-MiniLM-L6-v2/model) says nothing: keep its parent's name too.
        name += "-" + (f"{p.parent.name}-{p.name}" if p.name in _GENERIC_DIRS and p.parent.name else p.name)
    return name


def _eval_run_name(embedder_dir, ckpt_path, model_choice, model_path, prompt_choice, max_len: int = 150) -> str:
    name = safe_name(scored_name(embedder_dir, ckpt_path, model_choice, model_path))
    if not (embedder_dir or ckpt_path):
        name += f"_{prompt_choice}"  # a saved Embedder or checkpoint carries its own prompt
    return _run_name(name, "model/prompt", max_len)


def _run_dir(resume, default: str) -> str:
    """hydra.run.dir: the run directory named by `resume=` (continue that run), else a new one."""
    return str(Path(str(resume)).expanduser().absolute()) if resume else default


def _cwd() -> str:
    """The directory the command was started from. Unlike `${hydra:runtime.cwd}` it resolves before Hydra's
    runtime is set, which is when a multirun resolves `hydra.sweep.dir`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


def _run_group(default: str) -> str:
    """One W&B group per multirun sweep (its directory name), else `default`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        return f"{default}-{Path(HydraConfig.get().sweep.dir).name}"
    return default


def compose_config(config_name: str, overrides: list[str], output_dir: str | os.PathLike) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with `overrides` outside an app run (tests, benchmarks), as the app
    would: the Hydra runtime is set (output dir `output_dir`, job 0) so `${hydra:…}` resolves, and
    `paths.output_dir` points there too. The returned config has no `hydra` node, like an app's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def register_resolvers() -> None:
    for name, fn in (("embedlab_run_name", _run_name), ("embedlab_eval_run_name", _eval_run_name),
                     ("embedlab_run_group", _run_group), ("embedlab_short_overrides", short_overrides),
                     ("embedlab_run_dir", _run_dir), ("embedlab_cwd", _cwd)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


class _DropTip(logging.Filter):
    """Lightning's advertisement for its cloud logger ("💡 Tip: … litlogger …") on every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_known_noise() -> None:
    """Silence messages that are expected and harmless, where they come from (and nothing else there):
    faiss's "Loading faiss with AVX2 support" lines, Lightning's litlogger tip, torch's deprecation of
    the `LeafSpec` check inside Lightning's pytree helper (Lightning's code, not ours, triggers it), and the
    second copy of every Lightning log line (`one_handler_for_lightning`)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTip())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    one_handler_for_lightning()


#: Lightning's loggers: `lightning` always gets a console handler ("INFO: …") when imported, and its subpackages
#: get one (and stop propagating) when the root logger had no handler yet at their import.
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def one_handler_for_lightning() -> None:
    """Once the root logger has handlers (Hydra's job logging: console and the run's log file), Lightning's lines go
    through them alone: Lightning's own console handlers are removed and its loggers propagate, so each line shows
    once (not once as "INFO: …" and again in Hydra's format) and reaches the run's log file."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers (never a file handler)
                logger.removeHandler(handler)
        logger.propagate = True


quiet_known_noise()


def refuse_bad_command(cfg: DictConfig, keys: tuple[str, ...], check=None) -> None:
    """The checks of a command line that need nothing heavy imported, run first by every entry point: `check(cfg)`
    when given (evaluate.py, mine.py: one loadable model source, embedders.source_checks; train.py: its combination
    rules), then the value types of `keys` with signatures read from source (`check_config_types(static=True)`). A refusal prints `error: …` and exits 2
    within seconds, before torch, Lightning and transformers are imported."""
    try:
        if check is not None:
            check(cfg)
        check_config_types(cfg, keys=keys, static=True)
    except (ConfigTypeError, ValueError) as e:
        log.error("refused: %s", e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():  # feedback before the imports of the job (seconds on a small machine)
        log.info("command checked; run directory %s (loading torch, Lightning, transformers)",
                 HydraConfig.get().runtime.output_dir)


def print_help_and_exit(argv: list[str], script: str, doc: str) -> None:
    """`--help`/`-h`: the script's usage and the config groups with their options, read from `conf/` (Hydra's own
    help composes every group first, seconds per group on a small machine). `--hydra-help` is Hydra's."""
    if not ({"--help", "-h"} & set(argv[1:])):
        return
    conf = Path(__file__).resolve().parents[1] / "conf"
    groups = []
    for group in sorted(p for p in conf.rglob("*") if p.is_dir() and p.relative_to(conf).parts[0] != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        if options:
            groups.append(f"  {group.relative_to(conf)}: {', '.join(options)}")
    print(f"{doc.strip()}\n\nConfig groups (choose with group=option; each value with key=value):\n" + "\n".join(groups)
          + f"\n\n  python {script} --cfg job      the composed config of this command line (add overrides before it)\n"
          f"  python {script} --hydra-help   Hydra's own flags (multirun -m, --cfg, --package, ...)\n")
    raise SystemExit(0)


def resume_command(script: str, run_dir: str | os.PathLike) -> str:
    """The command that continues the run in `run_dir` (relative to the current directory when inside it)."""
    run_dir = Path(run_dir).absolute()
    try:
        shown = run_dir.relative_to(Path.cwd())
    except ValueError:
        shown = run_dir
    return f"python {script} {shell_argument('resume', shown)}"


def shell_argument(key: str, value) -> str:
    """`key=value` as a command line the project prints should hold it: pasted into a shell it reaches the entry
    point as typed (shell-quoted only when the value needs it; quote_path_arguments then reads it for Hydra)."""
    return shlex.quote(f"{key}={value}")


def parsed_override_value(arg: str):
    """The value Hydra reads from the override `arg` (quotes removed), or None when Hydra cannot parse it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (override,) = OverridesParser.create().parse_overrides([arg])
    except Exception:
        return None
    return None if override.is_sweep_override() else override.value()


def quote_path_arguments(argv: list[str]) -> list[str]:
    """Command-line overrides whose value is an existing file or directory pass as typed: a path that Hydra's
    override grammar cannot read bare (`resume=logs/train/runs/<time>_…_loss.alpha=9`, a space, brackets) is quoted
    for Hydra here, so a printed path pastes without quoting. Anything Hydra reads already is left alone."""
    out = list(argv[:1])
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if (sep and value and not arg.startswith("-") and parsed_override_value(arg) is None
                and Path(value).expanduser().exists()):
            arg = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(arg)
    return out


def refuse_missing_resume(argv: list[str]) -> None:
    """`resume=<dir>` of a directory that does not exist: say so before Hydra creates it as a new run."""
    for arg in argv[1:]:
        if arg.startswith("resume=") and arg != "resume=null":
            value = parsed_override_value(arg)
            path = Path(str(value if isinstance(value, str) else arg.partition("=")[2])).expanduser()
            if not path.is_dir():
                print(f"error: {arg}: no such run directory ({path.absolute()}). Run directories are "
                      "logs/<task>/runs/<time>_<name>", file=sys.stderr)
                raise SystemExit(2)


def is_launcher_rank_zero() -> bool:
    """True in the process that launched the run (not in DDP children or non-zero SLURM tasks)."""
    return all(int(os.environ.get(v, "0")) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def wandb_run_id(cfg: DictConfig, output_dir: Path) -> None:
    """Keep one W&B run per output directory: a resumed (or requeued) run logs into the same run."""
    if OmegaConf.select(cfg, "logger.wandb") is None or OmegaConf.select(cfg, "logger.wandb.id"):
        return
    id_file = output_dir / "wandb_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        output_dir.mkdir(parents=True, exist_ok=True)
        if is_launcher_rank_zero():
            id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
        cfg.logger.wandb.resume = "allow"


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a `_target_` of a config group (callbacks, logger)."""
    return [instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def finish_loggers(loggers, status: str = "success") -> None:
    """Finalize loggers and end W&B runs, so the next job of an in-process multirun gets its own run."""
    for lg in loggers:
        lg.finalize(status)
        if type(lg).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


def adapt_cfg_with_multirun(argv: list[str]) -> list[str]:
    """`-m … --cfg …`: Hydra refuses the pair, but users want to see a sweep's configuration (its launcher
    above all). Rewrite it to the first job of the sweep, in multirun mode, and say so on stderr."""
    import sys

    multirun = {"-m", "--multirun"}
    cfg_flags = {"-c", "--cfg"}
    if not (multirun & set(argv)) or not (cfg_flags & set(argv) or any(a.startswith("--cfg=") for a in argv)):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out, skip_next = [argv[0]], False
    for i, arg in enumerate(argv[1:], start=1):
        if skip_next:
            out.append(arg)
            skip_next = False
            continue
        if arg in multirun:
            continue
        if arg in cfg_flags or arg in ("-p", "--package"):
            out.append(arg)
            skip_next = i + 1 < len(argv)
            continue
        if arg.startswith("-") or "=" not in arg:
            out.append(arg)
            continue
        (override,) = parser.parse_overrides([arg])
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={first}")
        else:
            out.append(arg)
    print("note: --cfg with --multirun shows the configuration of the sweep's first job (in multirun mode)",
          file=sys.stderr)
    return [out[0], "hydra.mode=MULTIRUN", *out[1:]]
