"""Save and load minisd's trained weights: one safetensors file plus its sha256, checked before use.

The file holds the "text_encoder.*" and "unet.*" tensors (float16 or float32) and, as metadata, the
format tag, the model + scheduler config (JSON: see minisd/architecture.py; its "unet" and "scheduler"
sections are diffusers configs) and the vocabulary (JSON). ``load`` refuses anything it cannot trust with a
WeightsError that says what is wrong and what to do, instead of a shape error deep inside the first kernel.
It checks the tensors against the architecture the config describes, without importing torch:

    state, config = load()          # numpy float32 arrays by key, and the config dict (+ "vocab")

A file may also hold minisd's autoencoder alone (``python -m minisd train-vae`` writes one): "vae.*"
tensors, a config with only a "vae" section (a diffusers AutoencoderKL config) and no vocabulary, since an
autoencoder reads no prompts. ``load`` refuses it with a pointer to ``load_vae``, which reads only those:

    state, config = load_vae("runs/vae/vae.safetensors")    # config == {"vae": {...}}
"""

import hashlib
import json
import math
import os
import re
import stat
from pathlib import Path

import numpy as np

from minisd import architecture, files

FORMAT = "minisd-2"  # minisd-1 stored the config in minisd's own terms: read with architecture.upgrade_v1
DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "minisd.safetensors"
_DTYPES = {"float16": np.float16, "float32": np.float32}
SHA256_LINE = re.compile(r"\\?([0-9a-fA-F]{64})\s")  # `sha256sum` writes "<digest>  <name>" (hex of any case)


class WeightsError(Exception):
    """The weights file is missing, corrupt, or does not match the model it claims to be."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path):
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save(state_dict, config, path=None, dtype="float16"):
    """Write ``state_dict`` (torch tensors or numpy arrays) as safetensors, then its ``.sha256`` file.

    float16 halves the file (15 MB instead of 31 MB); the model loses nothing visible to it. Both files
    are written whole or not at all (minisd.files); the checksum is renamed into place right after the
    weights, so the two agree except in the instant between two renames.
    """
    from safetensors.numpy import save as to_bytes  # numpy flavour: loading must not need torch

    from minisd.text import VOCAB

    path = Path(path or DEFAULT_PATH)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    arrays = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().float().cpu().numpy()
        arrays[key] = np.ascontiguousarray(value, dtype=_DTYPES[dtype])
    model_config = {k: v for k, v in config.items() if k != "vocab"}
    metadata = {"format": FORMAT, "config": json.dumps(model_config)}
    if not vae_only(model_config):
        metadata["vocab"] = json.dumps(VOCAB)
    data = to_bytes(arrays, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    files.write_text(checksum_path(path), f"{digest}  {path.name}\n")  # the format `sha256sum -c` reads
    return path


def vae_only(config):
    """Whether ``config`` describes minisd's autoencoder alone (a VAE weights file's)."""
    return set(config) - {"vocab"} == {"vae"}


def expected_shapes(config):
    """Every key of the model ``config`` describes, with its shape (minisd.architecture: no torch)."""
    try:
        if vae_only(config):
            return architecture.read_vae(config).parameter_shapes()
        return architecture.read(config).parameter_shapes()
    except architecture.ConfigError as err:
        raise WeightsError(
            f"the config stored in the weights does not describe a minisd model: {err}"
        ) from err


# ------------------------------------------------- reading the file: each check says what is wrong and what to do


def resolve(path):
    """None -> the shipped weights; an empty path is a mistake (a script's unset variable), not the default."""
    if path is None:
        return DEFAULT_PATH
    if str(path) == "":
        raise WeightsError(
            "the weights path is empty: pass a minisd .safetensors file, or leave it out for the shipped one"
        )
    return Path(path)


def _kind(mode):
    for test, name in [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]:
        if test(mode):
            return name
    return "not a regular file"


def check_file(path, what="a minisd .safetensors file"):
    """``path`` is a regular, non-empty file, decided from its metadata alone: reading a FIFO blocks forever
    and a device such as /dev/zero never ends, so neither may be opened."""
    try:
        info = os.stat(path)  # follows symlinks: what a read would open
    except FileNotFoundError:
        raise WeightsError(
            f"no minisd weights at {path}. Train them with `python -m minisd train` "
            "(it writes minisd.safetensors and its .sha256), or pass the path of a trained file."
        ) from None
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        via = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise WeightsError(f"{path} is {_kind(info.st_mode)}{via}; pass the path of {what}")
    if info.st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); restore it or re-export the weights")


def _read_digest(sums, path):
    """The sha256 recorded in ``sums``, lower-case: the first word of the first line, as `sha256sum -c` reads."""
    fix = f"it should hold the line `sha256sum {path.name}` prints: re-export the weights or rewrite it so"
    if not sums.is_file():
        raise WeightsError(f"{sums} is {_kind(os.stat(sums).st_mode)}, not a checksum file; {fix}")
    with open(sums, "rb") as f:
        head = f.read(4096)  # one line of ~100 bytes: no need to read a mistaken big file whole
    match = SHA256_LINE.match(head.decode("ascii", errors="replace") + "\n")
    if match is None:
        raise WeightsError(f"{sums} does not start with a 64-digit hex sha256; {fix}")
    return match.group(1).lower()


def _check_checksum(path):
    sums = checksum_path(path)
    if not sums.exists():
        raise WeightsError(f"{sums} is missing, so {path.name} cannot be verified; re-export the weights.")
    expected = _read_digest(sums, path)
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(
            f"{path} is corrupt or was changed: its sha256 is {actual} but {sums.name} says {expected}. "
            "Restore the file (or re-export it with minisd.weights.save)."
        )


def _read(path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            for key in f.keys():  # before any tensor is read: numpy cannot even hold bfloat16
                tag = f.get_slice(key).get_dtype()
                if tag not in ("F16", "F32"):
                    name = _dtype_name(tag)
                    raise WeightsError(
                        f"{path}: {key} is {name}; minisd weights are float16 or float32. Convert the state "
                        "dict (e.g. torch: {k: v.half()}) and save it with minisd.weights.save."
                    )
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err})") from err
    return tensors, metadata


def _dtype_name(tag):
    """A safetensors dtype tag as numpy names it: I32 -> int32, BF16 -> bfloat16 (which numpy cannot hold)."""
    prefix = tag.rstrip("0123456789")
    return {"F": "float", "I": "int", "U": "uint", "BF": "bfloat"}.get(prefix, prefix.lower()) + tag[
        len(prefix) :
    ]


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_config(path, config):
    """The parts of the stored config that nothing else checks before they are used: each section is there,
    the UNet's channel list is a list of positive ints with one entry per down and up block, and the
    scheduler builds and clips to a positive range."""
    from minisd.schedulers import DDIMScheduler

    def bad(what):
        return WeightsError(
            f"{path}: the config stored in the weights does not describe a minisd model: it {what}. "
            "Re-export the weights with minisd.weights.save."
        )

    if not isinstance(config, dict):
        raise bad(f"is a {type(config).__name__}, not a JSON object")
    if vae_only(config):
        raise WeightsError(
            f"{path} holds minisd's autoencoder alone (a VAE weights file, as `python -m minisd train-vae` "
            "writes), not a whole minisd model; read it with minisd.weights.load_vae"
        )
    for section in ("text_encoder", "unet", "scheduler"):
        if not isinstance(config.get(section), dict):
            raise bad(f"has no {section!r} section")
    unet = config["unet"]
    channels = unet.get("block_out_channels")
    if not isinstance(channels, list) or not channels or not all(map(_positive_int, channels)):
        raise bad(f"has block_out_channels {channels!r}, not a list of positive ints")
    for blocks in ("down_block_types", "up_block_types"):
        if not isinstance(unet.get(blocks), list) or len(unet[blocks]) != len(channels):
            raise bad(f"has {blocks} {unet.get(blocks)!r}: it needs one entry per block_out_channels entry")
    scheduler = config["scheduler"]
    if not _positive_int(scheduler.get("num_train_timesteps")):
        raise bad(f"has num_train_timesteps {scheduler.get('num_train_timesteps')!r}, not a positive int")
    limit = scheduler.get("clip_sample_range", 1.0)
    if scheduler.get("clip_sample", True) and not (isinstance(limit, (int, float)) and 0 < limit < math.inf):
        raise bad(f"has clip_sample_range {limit!r}: x0 clipping needs a range > 0")
    try:
        DDIMScheduler.from_config(scheduler)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise bad(f"has a scheduler minisd cannot build ({err})") from None


def peek_config(path=None):
    """The config of a weights file from its header alone (no tensor read, no checksum): cheap enough to
    check options that depend on it, such as the number of steps, before the slow load."""
    path, config = _peek(path)
    check_config(path, config)
    return config


def holds_vae_only(path):
    """Whether the weights file ``path`` holds minisd's autoencoder alone, from its header."""
    return vae_only(_peek(path)[1])


def _peek(path):
    from safetensors import SafetensorError, safe_open

    path = resolve(path)
    check_file(path)
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err})") from err
    config, _ = _parse_metadata(path, metadata)
    return path, config


def _parse_metadata(path, metadata):
    if metadata.get("format") not in (FORMAT, "minisd-1"):
        raise WeightsError(f"{path} has format {metadata.get('format')!r}; minisd reads only {FORMAT!r}")
    try:
        config = json.loads(metadata["config"])
        if isinstance(config, dict) and vae_only(config):
            return config, None  # an autoencoder reads no prompts: no vocabulary to agree on
        vocab = json.loads(metadata["vocab"])
    except (KeyError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} has no valid 'config'/'vocab' JSON in its metadata ({err})") from err
    if metadata["format"] == "minisd-1":
        try:
            config = architecture.upgrade_v1(config)
        except architecture.ConfigError as err:
            raise WeightsError(f"{path}: {err}") from err
    from minisd.text import VOCAB

    if vocab != VOCAB:
        raise WeightsError(f"{path} was trained with another vocabulary ({vocab}); token ids would not match")
    return config, vocab


def _check_tensors(path, tensors, config):
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})"] if extra else []
        raise WeightsError(f"{path} does not match the minisd model: keys {'; '.join(parts)}")
    wrong = [
        f"{key}: {tuple(tensors[key].shape)} instead of {shape}"
        for key, shape in expected.items()
        if tuple(tensors[key].shape) != shape
    ]
    if wrong:
        raise WeightsError(f"{path} has {len(wrong)} tensors of the wrong shape, e.g. {'; '.join(wrong[:3])}")
    for key, value in tensors.items():
        if value.dtype not in (np.float16, np.float32):
            raise WeightsError(f"{path}: {key} is {value.dtype}; minisd weights are float16 or float32")
        if not np.isfinite(value).all():
            raise WeightsError(f"{path}: {key} contains NaN or inf; the training run that wrote it diverged")


def load(path=None):
    """Check and read the weights -> (dict of float32 numpy arrays, config dict with a "vocab" list)."""
    path, tensors, config, vocab = _read_checked(path)
    check_config(path, config)
    _check_tensors(path, tensors, config)
    return _float32(tensors), {**config, "vocab": vocab}


def load_vae(path):
    """Check and read a VAE weights file -> (dict of float32 numpy arrays "vae.*", config {"vae": ...})."""
    path, tensors, config, _ = _read_checked(path)
    if not isinstance(config, dict) or not vae_only(config):
        sections = ", ".join(map(repr, config)) if isinstance(config, dict) else type(config).__name__
        raise WeightsError(
            f"{path} is not a VAE weights file: its config has {sections}, not a 'vae' section alone; "
            "read a whole minisd model with minisd.weights.load"
        )
    _check_tensors(path, tensors, config)
    return _float32(tensors), config


def _read_checked(path):
    """The file's tensors, config and vocabulary, once the file, its checksum and metadata are sound."""
    path = resolve(path)
    check_file(path)
    _check_checksum(path)
    tensors, metadata = _read(path)
    return (path, tensors, *_parse_metadata(path, metadata))


def _float32(tensors):
    return {key: value.astype(np.float32) for key, value in tensors.items()}
