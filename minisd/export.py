"""``python -m minisd export``: minisd's trained networks for other runtimes.

    python -m minisd export --onnx DIR        # DIR/unet.onnx, DIR/text_encoder.onnx, checked in onnxruntime
    python -m minisd export --diffusers DIR   # DIR/unet/ and DIR/scheduler/, read by diffusers' from_pretrained
                                              # (and DIR/vae/ where the weights hold an autoencoder)

Each ONNX file is run in onnxruntime on fresh inputs, at another batch size than it was exported with, and
must equal the PyTorch model (minisd/model.py) within ONNX_TOLERANCE, or the export fails.

The text encoder is minisd's own, not CLIP. Its keys are transformers' CLIPTextModel's after a prefix
rename, but CLIP masks attention causally (each token sees only those before it) and minisd's encoder does
not, so the same weights in CLIPTextModel give other hidden states (up to 1.99 apart on the shipped
weights). It is exported as ONNX (with that note in the file), and not as a transformers text_encoder/.
"""

import argparse
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from minisd import files

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch|: float32 rounding (the shipped weights: <= 2e-6)
ONNX_OPSET = 18
CHECK_BATCH = (
    3  # onnxruntime checks at this batch size; the export traces at 2, so the batch axis must be free
)
TEXT_ENCODER_NOTE = (
    "minisd's text encoder: CLIP-like (keys are transformers' CLIPTextModel's after a prefix rename) but "
    "without CLIP's causal attention mask, so it is not a CLIPTextModel."
)


class ExportError(Exception):
    """The export cannot be written, or what was written does not reproduce the PyTorch model."""


def load_model(weights_path=None):
    """The PyTorch model of the trained (or given) weights, in eval mode, and its config: a MiniSD, or a
    VAEOnly where the file holds an autoencoder alone (minisd.weights.load_vae)."""
    from minisd import weights
    from minisd.model import MiniSD, VAEOnly

    if weights_path is not None and weights.holds_vae_only(weights.resolve(weights_path)):
        state, config = weights.load_vae(weights_path)
        model = VAEOnly(config)
    else:
        state, config = weights.load(weights_path)
        config = {key: value for key, value in config.items() if key != "vocab"}
        model = MiniSD(config)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    return model.eval(), config


def example_inputs(config, batch, seed=0):
    """Random inputs for each network, by argument name: what the export traces and the check feeds."""
    g = torch.Generator().manual_seed(seed)
    text, unet = config["text_encoder"], config["unet"]
    size = unet["sample_size"]
    return {
        "text_encoder": {
            "input_ids": torch.randint(0, text["vocab_size"], (batch, text["max_length"]), generator=g)
        },
        "unet": {
            "sample": torch.randn(batch, unet["in_channels"], size, size, generator=g),
            "timestep": torch.rand(batch, generator=g) * 999,
            "encoder_hidden_states": torch.randn(batch, text["max_length"], text["hidden_size"], generator=g),
        },
    }


def _onnx_modules():
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter needs it)
    except ImportError as err:
        raise ExportError(
            f"export --onnx needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
            'pip install -e ".[test]", or pip install onnx onnxscript onnxruntime'
        ) from None
    return onnxruntime


def check_onnx(path, module, inputs, tolerance=ONNX_TOLERANCE):
    """Run ``path`` in onnxruntime on ``inputs`` and compare with ``module``: the max |difference|, or an
    ExportError if it exceeds ``tolerance``."""
    onnxruntime = _onnx_modules()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    with torch.no_grad():
        expected = module(*inputs.values()).numpy()
    if got.shape != expected.shape:
        raise ExportError(f"{path} returns shape {got.shape}, the PyTorch model {expected.shape}")
    error = float(np.abs(got - expected).max())
    if not error <= tolerance:  # also catches NaN
        raise ExportError(f"{path} differs from the PyTorch model by {error:.3g} (tolerance {tolerance:g})")
    return error


def export_onnx(model, config, folder):
    """Write folder/text_encoder.onnx and folder/unet.onnx (batch axis free) and check each in onnxruntime.

    Returns {name: (path, max |onnxruntime - torch|)}.
    """
    _onnx_modules()
    Path(folder).mkdir(exist_ok=True)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" x4 per export
    traced, checked = example_inputs(config, batch=2, seed=0), example_inputs(config, CHECK_BATCH, seed=1)
    notes = {"text_encoder": TEXT_ENCODER_NOTE, "unet": "minisd's UNet2DConditionModel, predicting epsilon."}
    results = {}
    for name in ("text_encoder", "unet"):
        module, inputs = getattr(model, name), traced[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns of its own internals: nothing to act on
            program = torch.onnx.export(
                module,
                tuple(inputs.values()),
                input_names=list(inputs),
                output_names=["encoder_hidden_states" if name == "text_encoder" else "noise_pred"],
                dynamic_shapes={arg: {0: "batch"} for arg in inputs},
                opset_version=ONNX_OPSET,
                dynamo=True,
                verbose=False,
            )
        program.model.doc_string = notes[name]
        path = Path(folder) / f"{name}.onnx"
        program.save(str(path))
        results[name] = path, check_onnx(path, module, checked[name])
    return results


def diffusers_unet_config(config):
    """minisd's unet config as diffusers' UNet2DConditionModel reads it: the stored one, which is diffusers'
    own (minisd.architecture: attention_head_dim counts heads per block, as diffusers means it)."""
    return dict(config["unet"])


def sampling_scheduler(config):
    """The DDIMScheduler minisd samples with: the stored config, timestep spacing ("trailing") included."""
    from minisd.schedulers import DDIMScheduler

    return DDIMScheduler.from_config(config["scheduler"])


def export_diffusers(model, config, folder):
    """Write folder/unet/ and folder/scheduler/ (a MiniSD's) and folder/vae/ (where the model has an
    autoencoder) in diffusers' layout: config.json and diffusion_pytorch_model.safetensors in each model's
    folder. No text_encoder/: see the module's docstring. Returns the folders written."""
    from minisd.model import MiniSD

    written = []
    if isinstance(model, MiniSD):
        config_unet = {"_class_name": "UNet2DConditionModel", **diffusers_unet_config(config)}
        written.append(_write_diffusers_model(Path(folder) / "unet", config_unet, model.unet))
        sampling_scheduler(config).save_pretrained(Path(folder) / "scheduler")
        written.append(Path(folder) / "scheduler")
    if model.vae is not None:
        config_vae = {"_class_name": "AutoencoderKL", **config["vae"]}  # a diffusers config as it is stored
        written.append(_write_diffusers_model(Path(folder) / "vae", config_vae, model.vae))
    return tuple(written)


def _write_diffusers_model(folder, config, module):
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    files.write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    state = {key: value.contiguous() for key, value in module.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return folder


def check_output_folder(path, flag):
    """A folder to write into: it may exist, but its parent must (a typo should not make new folders)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ExportError(f"{flag} {path} is a file; name a folder")
    if not path.parent.is_dir():
        raise ExportError(f"{flag} {path}: the folder {path.parent} does not exist")
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m minisd export", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--onnx", metavar="DIR", help="write unet.onnx and text_encoder.onnx here, checked in onnxruntime"
    )
    p.add_argument(
        "--diffusers", metavar="DIR", help="write unet/, scheduler/ (and vae/) here in diffusers' layout"
    )
    p.add_argument(
        "--weights", help="a minisd .safetensors file (default: the trained one in minisd/weights)"
    )
    args = p.parse_args(argv)
    if args.onnx is None and args.diffusers is None:
        p.error("say what to write: --onnx DIR and/or --diffusers DIR")
    return args


def main(argv=None):
    from minisd.weights import WeightsError

    args = parse_args(argv)
    try:  # everything that can be checked before anything is loaded or written
        onnx_dir = args.onnx and check_output_folder(args.onnx, "--onnx")
        diffusers_dir = args.diffusers and check_output_folder(args.diffusers, "--diffusers")
        if onnx_dir:
            _onnx_modules()
        model, config = load_model(args.weights)
        if onnx_dir and "unet" not in config:
            raise ExportError(
                f"--onnx writes the text encoder and UNet, and {args.weights} holds an autoencoder alone: "
                "export it with --diffusers DIR"
            )
        if onnx_dir:
            for path, error in export_onnx(model, config, onnx_dir).values():
                print(
                    f"wrote {path}: onnxruntime matches PyTorch to {error:.1e} (tolerance {ONNX_TOLERANCE:g})"
                )
        if diffusers_dir:
            for path in export_diffusers(model, config, diffusers_dir):
                print(f"wrote {path}/")
            if "unet" in config:
                print(
                    "no text_encoder/: minisd's encoder has no causal mask, so transformers' CLIPTextModel "
                    "would give other numbers; encode prompts with minisd.model.TextEncoder (or text_encoder.onnx)"
                )
    except (ExportError, WeightsError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    main()
