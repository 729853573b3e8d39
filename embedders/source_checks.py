"""Checking where a command loads a model from, before anything is loaded: `model.path` (a local directory or a hub
id) and a saved Embedder directory (`embedder_dir=`, `Embedder.from_pretrained`). A wrong path, a run directory
instead of its `embedder/`, or a damaged file (invalid JSON, a cut-off `model.safetensors`, a missing tokenizer, a
`config.json` that does not fit the weights) is refused with `ModelSourceError`, naming the file and what to do,
instead of the errors transformers, safetensors or huggingface_hub raise far from it (or after a minute of network
retries)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from operations.hydra_app import task_overrides

#: What a saved Embedder directory names its spec (embedders/saving.py writes it).
EMBEDDER_FILE = "embedder.json"
#: Any of these is a tokenizer transformers can load without converting a slow one (which needs sentencepiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model")
_TRUE = {"1", "ON", "YES", "TRUE"}


class ModelSourceError(ValueError):
    """A model source (model.path, embedder_dir, a saved Embedder's files) that cannot be loaded: the message names
    the path or file and what to do. Raised before any model is loaded."""


# ------------------------------------------------------------------------------------------------ model.path
def hub_offline() -> bool:
    """Whether huggingface_hub is told not to use the network (HF_HUB_OFFLINE, or transformers' TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_a_path(text: str) -> bool:
    """A value that can only mean a local path: hub ids are `name` or `owner/name`."""
    return text.startswith(("/", "./", "../", "~", ".\\")) or text in (".", "..") or text.count("/") > 1 or "\\" in text


def is_hub_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a model (its config.json, or a PEFT adapter's config)."""
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str)
               for name in ("config.json", "adapter_config.json"))


def check_model_path(path, key: str = "model.path") -> None:
    """Refuse at once a `model.path` that is neither an existing directory nor a hub id, and a hub id that is not
    in the local cache while the hub is offline (HF_HUB_OFFLINE=1)."""
    if path is None:
        return
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        return
    if local.exists():
        raise ModelSourceError(f"{key}={text} is a file; it must be a model directory (config.json and weights) or a "
                               "hub id (owner/name). For a training checkpoint use ckpt_path=, for a saved Embedder "
                               "embedder_dir=")
    if looks_like_a_path(text) or not is_hub_id(text):
        raise ModelSourceError(f"{key}={text}: no such directory ({local.absolute()}), and not a hub id (owner/name "
                               "of a Hugging Face model). Check the path, or give the model's hub id")
    if hub_offline() and not in_hub_cache(text):
        from huggingface_hub import constants

        raise ModelSourceError(
            f"{key}={text} is a hub id, but the model is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and HF_HUB_OFFLINE=1 forbids downloading it. Download it first where there is a network "
            f"(`hf download {text}`, with the same HF_HOME), give its local directory as {key}, or unset "
            "HF_HUB_OFFLINE")


# ------------------------------------------------------------------------------------ a saved Embedder directory
def remedy(directory: Path) -> str:
    """What to do about a damaged saved Embedder: write it again, from the run's checkpoint when there is one."""
    run = directory.parent
    ckpt = run / "checkpoints" / "last.ckpt"
    if directory.name == "embedder" and ckpt.is_file():
        return (f"write it again from the run's checkpoint: python export.py {ckpt} {directory} --overwrite "
                "(or copy it again from where it came)")
    return ("copy it again from where it came, or write it again: python export.py <run>/checkpoints/last.ckpt "
            f"{directory} --overwrite (or Embedder.save_pretrained)")


def _not_an_embedder_directory(directory: Path) -> ModelSourceError:
    nested = directory / "embedder" / EMBEDDER_FILE
    if nested.is_file():
        return ModelSourceError(f"{directory} is a run directory, not a saved Embedder: did you mean "
                                f"{directory / 'embedder'}? (embedder_dir={directory / 'embedder'})")
    checkpoints = sorted((directory / "checkpoints").glob("*.ckpt")) if (directory / "checkpoints").is_dir() else []
    if checkpoints:
        last = directory / "checkpoints" / "last.ckpt"
        ckpt = last if last in checkpoints else checkpoints[-1]
        return ModelSourceError(f"{directory} is a run directory without a saved Embedder (the run saved none: "
                                f"save_embedder=false, or it did not finish). Score its checkpoint instead: "
                                f"ckpt_path={ckpt}")
    saved = sorted(p.parent for p in directory.glob(f"*/embedder/{EMBEDDER_FILE}"))
    if saved:
        shown = ", ".join(str(p) for p in saved[:3]) + (f", … ({len(saved)} in all)" if len(saved) > 3 else "")
        return ModelSourceError(f"{directory} holds run directories, not a saved Embedder: give one of their "
                                f"embedder/ directories, e.g. {shown}")
    return ModelSourceError(f"{directory} is not a saved Embedder directory: {EMBEDDER_FILE} is missing. Give the "
                            "embedder/ directory of a training run (or an export.py output); for a plain backbone "
                            "use model=<config> model.path=<directory or hub id>")


def _read_json(path: Path, directory: Path, what: str):
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as err:
        raise ModelSourceError(f"{path} is not a text file ({err}): the saved Embedder is damaged; "
                               f"{remedy(directory)}") from None
    except ValueError as err:
        raise ModelSourceError(f"{path} is not valid JSON ({err}): the {what} is damaged (an interrupted copy or an "
                               f"edit); {remedy(directory)}") from None


def safetensors_numel(path: Path, directory: Path) -> int:
    """The number of values stored in a safetensors file, after checking that the file is complete (its header
    and every tensor's bytes are there): a cut-off file is named with the bytes it has and needs."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else None
        header_bytes = f.read(n) if n is not None and n <= size - 8 else None
    cut = f"{path} is incomplete ({size} bytes): an interrupted save or copy; {remedy(directory)}"
    if header_bytes is None or len(header_bytes) != n:
        raise ModelSourceError(cut)
    try:
        header = json.loads(header_bytes)
    except ValueError:
        raise ModelSourceError(f"{path} is not a safetensors file (its header is not readable): damaged; "
                               f"{remedy(directory)}") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    if 8 + n + end > size:
        raise ModelSourceError(f"{path} is incomplete: {size} of its {8 + n + end} bytes are there (an interrupted "
                               f"save or copy); {remedy(directory)}")
    return sum(math.prod(v["shape"]) for v in tensors.values())


def check_saved_embedder(directory: str | os.PathLike) -> dict:
    """The spec (`embedder.json`) of the saved Embedder in `directory`, after checking that the directory is one
    and that its files are whole: the JSON files parse, every safetensors file is complete, a tokenizer is there.
    Returns the spec with `_stored_values` (values in its weight files) for `check_backbone_matches`."""
    directory = Path(directory)
    if not directory.exists():
        raise ModelSourceError(f"{directory} does not exist: give the embedder/ directory of a training run "
                               "(logs/train/runs/<run>/embedder) or an export.py output")
    if not directory.is_dir():
        hint = (f"; it looks like a training checkpoint: use ckpt_path={directory}" if directory.suffix == ".ckpt"
                else "")
        raise ModelSourceError(f"{directory} is a file, not a saved Embedder directory{hint}")
    spec_file = directory / EMBEDDER_FILE
    if not spec_file.is_file():
        raise _not_an_embedder_directory(directory)
    spec = _read_json(spec_file, directory, "saved Embedder's spec")
    if not isinstance(spec, dict) or not spec.get("family"):
        raise ModelSourceError(f"{spec_file} names no model family (it holds {str(spec)[:80]!r}): damaged; "
                               f"{remedy(directory)}")
    config = directory / "config.json"
    if not config.is_file():
        raise ModelSourceError(f"{config} is missing: the saved Embedder is incomplete; {remedy(directory)}")
    _read_json(config, directory, "model config")
    weights = sorted(directory.glob("*.safetensors"))
    if not weights and not any((directory / n).is_file() for n in ("pytorch_model.bin", "model.safetensors.index.json",
                                                                    "pytorch_model.bin.index.json")):
        raise ModelSourceError(f"{directory / 'model.safetensors'} is missing: the saved Embedder has no weights; "
                               f"{remedy(directory)}")
    stored = sum(safetensors_numel(w, directory) for w in weights)
    if not any((directory / n).is_file() for n in TOKENIZER_FILES):
        raise ModelSourceError(f"{directory / 'tokenizer.json'} is missing (and no other tokenizer file is there): "
                               f"the saved Embedder is incomplete; {remedy(directory)}")
    return {**spec, "_stored_values": stored if weights and not (directory / "model.safetensors.index.json").is_file()
            else None}


def check_backbone_matches(backbone, stored_values: int | None, directory: Path) -> None:
    """Every parameter of the loaded backbone came from the weight files: transformers fills parameters that
    `config.json` asks for but the weights lack (more layers, say) with random values and only logs it."""
    if stored_values is None:
        return
    params = sum(p.numel() for p in backbone.parameters())
    if params > stored_values:
        raise ModelSourceError(
            f"{directory / 'config.json'} does not match the weights in {directory / 'model.safetensors'}: the model "
            f"it describes has {params:,} parameters, the weights hold {stored_values:,} values, so transformers "
            f"would fill the rest with random numbers. config.json was edited or copied from another model; "
            f"{remedy(directory)}")


def raised_by_loader_library(err: BaseException) -> bool:
    """Whether `err` was raised inside transformers, safetensors, tokenizers or huggingface_hub (not by embedlab's
    own checks, whose messages already say what is wrong)."""
    tb = err.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename
    return any(f"{os.sep}{lib}{os.sep}" in filename for lib in ("transformers", "safetensors", "tokenizers",
                                                                  "huggingface_hub"))


def load_failure(directory: Path, err: Exception) -> ModelSourceError:
    """The error for transformers refusing a saved Embedder whose files passed `check_saved_embedder`: its
    config.json (validated by transformers) or its weights' shapes do not fit."""
    first = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
    text = str(err).lower()
    if "mismatch" in text or "shape" in text:
        what = f"{directory / 'config.json'} does not match the weights in {directory / 'model.safetensors'}"
    elif "sentencepiece" in text or "tiktoken" in text or "tokenizer" in text:
        what = f"the tokenizer files of {directory} cannot be loaded"
    else:
        what = f"{directory / 'config.json'} is not a valid model config"
    return ModelSourceError(f"{what} ({type(err).__name__}: {first[:300]}); the file was edited, or copied from "
                            f"another model; {remedy(directory)}")


def check_embedder_source(cfg: DictConfig) -> None:
    """evaluate.py / mine.py score one model: refuse a command line that names two sources, or a model/prompt
    that the given source would silently ignore (a saved Embedder or a checkpoint brings its own), and a source that
    cannot be loaded (a wrong model.path, a run directory given as embedder_dir, a damaged saved Embedder), all with
    `ModelSourceError` before any model is loaded."""
    given = [k for k in ("embedder_dir", "ckpt_path") if cfg.get(k)]
    if len(given) > 1:
        raise ModelSourceError(f"both embedder_dir={cfg.embedder_dir} and ckpt_path={cfg.ckpt_path} are set: give "
                               "one model to score")
    if not given:
        check_model_path(OmegaConf.select(cfg, "model.path"))
        return
    ignored = [o for o in task_overrides()
               if o.lstrip("+~").split("=")[0].split(".")[0].split("@")[0] in ("model", "prompt")]
    if ignored:
        key = given[0]
        raise ModelSourceError(
            f"{key}={cfg[key]} scores the model saved there, with the prompt it was trained with; "
            f"{', '.join(ignored)} would be ignored. Drop {' '.join(ignored)}, or drop {key}= to score "
            "model=… zero-shot (dtype= applies to every source)")
    if cfg.get("embedder_dir"):
        check_saved_embedder(cfg.embedder_dir)
