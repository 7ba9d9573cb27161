"""Save and load minisd's trained weights: one safetensors file plus its sha256, checked before use.

The file holds the "text_encoder.*" and "unet.*" tensors (float16 or float32) and, as metadata, the
format tag, the model + scheduler config (JSON: see minisd/architecture.py; its "unet" and "scheduler"
sections are diffusers configs) and the vocabulary (JSON). ``load`` refuses anything it cannot trust with a
WeightsError that says what is wrong and what to do, instead of a shape error deep inside the first kernel.
It checks the tensors against the architecture the config describes, without importing torch:

    state, config = load()          # numpy float32 arrays by key, and the config dict (+ "vocab")
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from minisd import architecture

FORMAT = "minisd-2"  # minisd-1 stored the config in minisd's own terms: read with architecture.upgrade_v1
DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "minisd.safetensors"
_DTYPES = {"float16": np.float16, "float32": np.float32}


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

    float16 halves the file (8.5 MB instead of 17 MB); the model loses nothing visible to it.
    """
    from safetensors.numpy import save_file  # numpy flavour: loading must not need torch

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
    metadata = {"format": FORMAT, "config": json.dumps(model_config), "vocab": json.dumps(VOCAB)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path), metadata=metadata)
    path.chmod(0o644)  # safetensors creates it owner-only; weights ship with the package, readable by all
    checksum_path(path).write_text(f"{sha256_of(path)}  {path.name}\n")  # the format `sha256sum -c` reads
    return path


def expected_shapes(config):
    """Every key of the model ``config`` describes, with its shape (minisd.architecture: no torch)."""
    try:
        return architecture.read(config).parameter_shapes()
    except architecture.ConfigError as err:
        raise WeightsError(
            f"the config stored in the weights does not describe a minisd model: {err}"
        ) from err


def _check_checksum(path):
    sums = checksum_path(path)
    if not sums.exists():
        raise WeightsError(f"{sums} is missing, so {path.name} cannot be verified; re-export the weights.")
    words = sums.read_text().split()
    expected = words[0] if words else "nothing"
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
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file ({err})") from err
    return tensors, metadata


def _parse_metadata(path, metadata):
    if metadata.get("format") not in (FORMAT, "minisd-1"):
        raise WeightsError(f"{path} has format {metadata.get('format')!r}; minisd reads only {FORMAT!r}")
    try:
        config = json.loads(metadata["config"])
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
    path = Path(path or DEFAULT_PATH)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder; pass the path of a minisd .safetensors file")
    if not path.exists():
        raise WeightsError(
            f"no minisd weights at {path}. Train them with `python -m minisd train` "
            "(it writes minisd.safetensors and its .sha256), or pass the path of a trained file."
        )
    _check_checksum(path)
    tensors, metadata = _read(path)
    config, vocab = _parse_metadata(path, metadata)
    _check_tensors(path, tensors, config)
    state = {key: value.astype(np.float32) for key, value in tensors.items()}
    return state, {**config, "vocab": vocab}
