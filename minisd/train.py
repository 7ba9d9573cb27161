"""Train minisd in PyTorch: ``python -m minisd train --vae runs/vae/vae.safetensors --minutes 8 --out runs/minisd``.

The recipe is Stable Diffusion's, shrunk: encode a scene (minisd.scenes) with the trained autoencoder
(``--vae``, from ``python -m minisd train-vae``; frozen), noise its latents to a random timestep, ask the UNet
for the noise (epsilon), minimise the squared error. The text encoder learns with the UNet. On top of that,
the pieces that make a short run work:

* AdamW, with a short learning-rate warm-up (also after a resume, since Adam's moments are not saved);
* an exponential moving average (EMA) of the weights, which samples much better than the raw weights;
* 10 % of prompts replaced by "" so the same model also predicts unconditionally: classifier-free guidance;
* bf16 autocast + channels_last on a GPU; data drawn by CPU worker processes so the GPU never waits
  (``--reuse`` steps on each batch drawn, with fresh latents, noise and timesteps, when drawing is slower
  than the GPU).

It writes, under --out: ``ckpt.pt`` (+ ``ckpt.step*.part*.pt``) to resume from, ``minisd.safetensors``
(+ .sha256), the EMA weights for minisd.generate (text encoder, UNet and the autoencoder: the whole model),
and ``train.log``. Nothing is lost: every file is written
whole or not at all (minisd.files), SIGINT (Ctrl-C) or SIGTERM saves and exits, and a folder that already
holds a run is resumed (--resume) or refused, never overwritten unless asked (--overwrite). At the end it
samples images with minisd's own sampling loop (the one minisd.generate runs) and scores them with
minisd.checker, so a run says itself whether the model follows its prompts.
"""

import argparse
import copy
import hashlib
import io
import math
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minisd import architecture, checks, files, scenes, text, weights
from minisd.checks import EXIT_USAGE, CliError
from minisd.model import MiniSD, count_parameters
from minisd.schedulers import DDPMScheduler

CFG_DROPOUT = 0.1  # fraction of prompts replaced by "" (the unconditional prompt)
PART_BYTES = 12 << 20  # checkpoint shards stay under the 16 MiB a file the course's GPU runner returns
CHECKPOINT, WEIGHTS = "ckpt.pt", "minisd.safetensors"


def run_parser(prog, description, out, batch_help="images a step"):
    """The options every training run has (this one's and train-vae's, checked by ``check_run_args``); each
    trainer adds its own and sets its defaults (``set_defaults``) for batch size, lr, warm-up and EMA."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--out", default=out, help="folder for checkpoint, weights and log")
    p.add_argument("--resume", help="ckpt.pt of an earlier run to continue from")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in all")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training wall time")
    p.add_argument("--batch-size", type=int, help=batch_help)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, help="linear learning-rate warm-up, in steps")
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--workers", type=int, default=None, help="data worker processes (default: CPUs - 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument(
        "--save-every", type=float, default=3.0, help="minutes between checkpoints (0: every step)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def parse_run_args(p, argv):
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None:
        p.error("give --steps or --minutes (or both) so the run knows when to stop")
    return args


def parse_args(argv):
    # Large batches pay: a step costs about the same from 256 to 1024 images (launch-bound).
    p = run_parser(
        "python -m minisd train",
        __doc__.split("\n\n")[0],
        "runs/minisd",
        "images a step (256 if memory is short)",
    )
    p.set_defaults(batch_size=1024, lr=7e-4, warmup=300, ema_decay=0.9995)
    p.add_argument("--vae", help="a new run's autoencoder: the vae.safetensors train-vae wrote")
    p.add_argument("--reuse", type=int, default=1, help="steps on each batch drawn (see above)")
    p.add_argument("--val-images", type=int, default=256, help="images sampled and checked at the end")
    p.add_argument(
        "--val-guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="scales to check"
    )
    return parse_run_args(p, argv)


def check_run_args(args):
    """The options every training run has (this one's and train-vae's), before a file is touched."""
    if args.steps is not None:
        checks.int_range("steps", args.steps)
    if args.minutes is not None:
        checks.number_range("minutes", args.minutes, 0, low_open=True)
    checks.int_range("batch_size", args.batch_size)
    checks.number_range("lr", args.lr, 0, 1, low_open=True)
    checks.int_range("warmup", args.warmup, why=" (1 = no warm-up)")
    checks.number_range("ema_decay", args.ema_decay, 0, 1)
    if args.workers is not None:
        checks.int_range("workers", args.workers, low=0)
    checks.int_range("seed", args.seed, low=0)
    checks.int_range("log_every", args.log_every)
    checks.number_range("save_every", args.save_every, 0)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(
            f"--device {args.device!r} is not a torch device; use cpu or cuda", EXIT_USAGE
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {args.device}: torch finds no CUDA GPU here; use --device cpu", EXIT_USAGE)
    if args.resume and args.overwrite:
        raise CliError("--resume continues a run and --overwrite starts over: give one of them", EXIT_USAGE)


def check_args(args):
    """Every option, before a file is touched or the model built."""
    check_run_args(args)
    checks.int_range("reuse", args.reuse)
    checks.int_range("val_images", args.val_images, low=0)
    for guidance in args.val_guidance:
        checks.guidance(guidance, "val_guidance")
    if bool(args.resume) == bool(args.vae):
        raise CliError(
            "a new run needs --vae (the vae.safetensors of python -m minisd train-vae); a resumed run keeps "
            "its checkpoint's autoencoder: give --vae or --resume, not both",
            EXIT_USAGE,
        )


def check_out(args, weights_name=WEIGHTS):
    """--out is a folder for this run: a run already in it is continued (--resume its ckpt.pt) or replaced
    (--overwrite), never overwritten silently. ``weights_name``: the weights file a run writes there."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; name a folder for the run", EXIT_USAGE)
    held = [name for name in (CHECKPOINT, weights_name) if (out / name).exists()]
    continues = args.resume and Path(args.resume).resolve().parent == out.resolve()
    if held and not (continues or args.overwrite):
        raise CliError(
            f"--out {out} already holds a training run ({', '.join(held)}); continue it with --resume "
            f"{out / CHECKPOINT}, choose another --out, or add --overwrite to start over there",
            EXIT_USAGE,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        files.check_writable(out)
    except OSError as err:
        raise CliError(f"--out {out}: cannot create files there ({err.strerror})", EXIT_USAGE) from None
    return out


class RandomBatches(torch.utils.data.IterableDataset):
    """An endless stream of (scenes, token ids) batches; each worker draws from its own seeded generator."""

    def __init__(self, batch_size, seed):
        self.batch_size, self.seed = batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([*self.seed, info.id if info else 0])
        while True:
            images, prompts = scenes.make_batch(self.batch_size, rng)
            yield torch.from_numpy(images), torch.from_numpy(text.tokenize(prompts))


def ignore_stop_signals(_worker_id):
    """In the data workers: Ctrl-C reaches the whole process group, but only the trainer decides to stop."""
    for signum in StopOnSignal.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def batches(args, start_step):
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 2)
    dataset = RandomBatches(args.batch_size, seed=[args.seed, start_step])  # fresh data after a resume
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # the dataset already yields whole batches
        num_workers=workers,
        pin_memory=args.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
    )
    return iter(loader)


class StopOnSignal:
    """SIGINT (Ctrl-C) or SIGTERM asks the run to stop after the current step, save and exit; a second one
    stops it at once, which loses nothing saved either (every write is atomic)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {signum: signal.signal(signum, self.handle) for signum in self.SIGNALS}
        return self

    def handle(self, signum, _frame):
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------------------- checkpoints


class CheckpointError(Exception):
    """The file given to --resume is not a whole minisd checkpoint."""


def _torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(path, model, ema, step, elapsed):
    """model + EMA in float32 as one unit: parts of <= 12 MiB named by their step, then the small index file
    ``path`` that lists them with their sha256.

    The index is renamed into place last: until then the previous checkpoint (index and its own parts) is
    whole, from then on the new one is, so a kill at any moment leaves one consistent step to resume from.
    AdamW's moments are left out on purpose: they would double the size, and Adam re-estimates them within
    a few hundred steps (the resumed run warms its learning rate up again meanwhile).
    """
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    parts, current, size = [], {}, 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > PART_BYTES:
            parts.append(current)
            current, size = {}, 0
        current[key], size = value.detach().float().cpu(), size + nbytes
    parts.append(current)
    names, digests = [f"{path.stem}.step{step}.part{i}.pt" for i in range(len(parts))], []
    for name, part in zip(names, parts, strict=True):
        raw = _torch_bytes(part)
        files.write_bytes(path.with_name(name), raw)
        digests.append(hashlib.sha256(raw).hexdigest())
    index = {"step": step, "elapsed": elapsed, "config": model.config, "parts": names, "sha256": digests}
    files.write_bytes(path, _torch_bytes(index))
    for old in path.parent.glob(f"{path.stem}.*part*.pt"):  # the previous checkpoint's parts
        if old.name not in names:
            old.unlink()


def _load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None


def read_checkpoint(path):
    """A checkpoint's index and tensors, every part checked against the index -> (index, tensors)."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise CheckpointError(f"--resume {path} {what}: give the ckpt.pt an earlier run wrote")
    with open(path, "rb") as f:
        head = f.read(10)
    if head[8:10] == b'{"':  # a safetensors file: 8 bytes of header length, then the JSON header
        raise CheckpointError(
            f"--resume {path} is a safetensors weights file (EMA weights only, for sampling); a run resumes "
            f"from the {CHECKPOINT} written next to it"
        )
    index = _load(path)
    if not isinstance(index, dict) or not {"step", "elapsed", "config", "parts"} <= set(index):
        raise CheckpointError(f"--resume {path} is a torch file but not a minisd checkpoint index")
    tensors = {}
    for i, name in enumerate(index["parts"]):
        part = path.with_name(name)
        if not part.is_file():
            raise CheckpointError(
                f"{part} is missing: the checkpoint {path} is incomplete; copy the whole run"
            )
        if (
            "sha256" in index and weights.sha256_of(part) != index["sha256"][i]
        ):  # older checkpoints: no sha256
            raise CheckpointError(f"{part} does not match the checkpoint {path} (sha256): it is damaged")
        tensors |= _load(part)
    return index, tensors


def apply_checkpoint(tensors, model, ema):
    for prefix, module in (("model.", model), ("ema.", ema)):
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def load_checkpoint(path, model, ema):
    index, tensors = read_checkpoint(path)
    apply_checkpoint(tensors, model, ema)
    return index["step"], index["elapsed"]


def remove_run(out, weights_name=WEIGHTS):
    """--overwrite: the previous run's checkpoint and weights go (its train.log stays: it only grows)."""
    doomed = [out / CHECKPOINT, out / weights_name, weights.checksum_path(out / weights_name)]
    for path in doomed + sorted(out.glob(f"{Path(CHECKPOINT).stem}.*part*.pt")):
        path.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------- training


@torch.no_grad()
def update_ema(ema, model, decay):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


@torch.no_grad()
def to_latents(posterior, scaling_factor):
    """The encoder's Gaussian (``vae.encode(images)``: mean, log-variance) -> what the UNet learns to denoise:
    a sample of it (as Stable Diffusion trains), times scaling_factor, so that the latents have unit variance
    as the noise does. A fresh sample each call: a batch reused for several steps is encoded once."""
    mean, logvar = posterior
    noise = torch.randn(mean.shape, device=mean.device)
    return (mean.float() + torch.exp(0.5 * logvar.float()) * noise) * scaling_factor


def diffusion_loss(model, latents, ids, alphas_cumprod, generator=None):
    """Noise each sample to a random timestep; mean squared error of the predicted noise."""
    n = latents.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (n,), device=latents.device, generator=generator)
    noise = torch.randn(latents.shape, device=latents.device, generator=generator)
    a = alphas_cumprod[t].view(n, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    eps = model(noisy, t, ids)
    return F.mse_loss(eps.float(), noise)


def prepare(args):
    """Every check, then the run's folder and the model (resumed or new, its autoencoder frozen): nothing
    slow happens before a bad option, a broken --vae or a broken --resume file is reported."""
    check_args(args)
    vae = None
    if args.vae:
        try:
            vae = weights.load_vae(args.vae)
        except weights.WeightsError as err:
            raise CliError(f"--vae: {err}") from None
    out, resumed = open_run(args)
    if resumed:
        model = MiniSD(resumed[0]["config"])
    else:
        state, vae_config = vae
        model = MiniSD(architecture.default_config() | vae_config)
        model.vae.load_state_dict({k.removeprefix("vae."): torch.from_numpy(v) for k, v in state.items()})
    if model.vae is None:
        raise CliError(f"--resume {args.resume}: its model has no autoencoder (a pixel-space minisd)")
    model.vae.requires_grad_(False)
    return (out, *restore(args, resumed, model))


def open_run(args, weights_name=WEIGHTS):
    """The --resume checkpoint (checked against --steps) and the --out folder, cleared of what --overwrite
    and killed writes left -> (out, (index, tensors) of the checkpoint or None)."""
    resumed = None
    if args.resume:
        try:
            resumed = read_checkpoint(args.resume)
        except CheckpointError as err:
            raise CliError(str(err)) from None
        at = resumed[0]["step"]
        if args.steps is not None and args.steps <= at:
            raise CliError(
                f"--steps {args.steps}: the checkpoint is at step {at} already and --steps counts all steps; "
                f"give more than {at}",
                EXIT_USAGE,
            )
    out = check_out(args, weights_name)
    if args.overwrite:
        remove_run(out, weights_name)
    for leftover in files.leftovers(out):  # of writes killed mid-way: the files they were replacing are whole
        leftover.unlink()
    return out, resumed


def restore(args, resumed, model):
    """``model`` (built from the checkpoint's config, if resumed), its EMA copy and the step and training
    seconds to go on from -> (model, ema, step, elapsed), with the checkpoint's weights in both."""
    ema = copy.deepcopy(model).requires_grad_(False)
    step, elapsed = 0, 0.0
    if resumed:
        index, tensors = resumed
        try:
            apply_checkpoint(tensors, model, ema)
        except RuntimeError as err:
            raise CliError(
                f"--resume {args.resume} does not fit the model its config describes ({err})"
            ) from None
        step, elapsed = index["step"], index["elapsed"]
    return model, ema, step, elapsed


def train(args):
    """The training run; returns the signal number that stopped it early, or None."""
    out, model, ema, step, elapsed_before = prepare(args)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.manual_seed(args.seed)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema.to(device)
    trained = [p for p in model.parameters() if p.requires_grad]  # the text encoder and the UNet
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01, fused=on_gpu)
    scaling_factor = model.config["vae"]["scaling_factor"]
    alphas_cumprod = torch.tensor(
        DDPMScheduler.from_config(model.config["scheduler"]).alphas_cumprod, device=device
    )

    log_file = open(out / "train.log", "a")  # noqa: SIM115  (kept open for the whole run)

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    gpu = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    log(f"minisd train: {count_parameters(model):,} parameters on {gpu}, from step {step}, args {vars(args)}")

    saved_step = step  # what --out (or --resume) already holds: a save with nothing new is skipped

    def save():  # a checkpoint to resume from, and the EMA weights minisd.generate loads
        nonlocal saved_step
        if step == saved_step:
            return
        save_checkpoint(out / CHECKPOINT, model, ema, step, elapsed_before + time.time() - start)
        weights.save(ema.state_dict(), model.config, out / WEIGHTS)
        saved_step = step

    stream = batches(args, step)
    start, first_step, losses, waited = time.time(), step, [], 0.0
    last_save = start
    budget_s = args.minutes * 60 if args.minutes is not None else math.inf
    model.train()
    with StopOnSignal() as stop:
        while (
            not stop.signum and (args.steps is None or step < args.steps) and time.time() - start < budget_s
        ):
            if (step - first_step) % args.reuse == 0:
                t0 = time.time()
                images, prompt_ids = next(stream)
                waited += time.time() - t0
                images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                prompt_ids = prompt_ids.to(device, non_blocking=True)
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                    posterior = model.vae.encode(images)
            drop = torch.rand(prompt_ids.shape[0], device=device) < CFG_DROPOUT
            ids = prompt_ids.masked_fill(drop[:, None], 0)  # all <pad> = the empty prompt ""

            for group in opt.param_groups:  # warm up again after a resume: Adam's moments start from zero
                group["lr"] = args.lr * min(1.0, (step - first_step + 1) / args.warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                latents = to_latents(posterior, scaling_factor)
                loss = diffusion_loss(model, latents, ids, alphas_cumprod)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            step += 1
            # Early on the average should forget its random start quickly: decay grows towards ema_decay.
            update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))

            losses.append(loss.detach())
            if step % args.log_every == 0:
                seconds = time.time() - start
                rate = (
                    (step - first_step) * args.batch_size / seconds
                )  # samples (a reused image counts again)
                mean = torch.stack(losses).mean().item()
                log(
                    f"step {step:6d}  loss {mean:.4f}  {rate:7.0f} img/s  data wait {waited:5.1f} s  {seconds:6.0f} s"
                )
                losses = []
            if time.time() - last_save >= args.save_every * 60:  # a run killed by a time limit keeps its work
                save()
                last_save = time.time()

        seconds = time.time() - start
        by = f" by {signal.Signals(stop.signum).name}" if stop.signum else ""
        log(
            f"stopped{by} at step {step} after {seconds:.0f} s ({(elapsed_before + seconds) / 60:.1f} min of training in all)"
        )
        save()  # still under the handler: a second signal now stops at once, and the last save stays whole
    path = out / WEIGHTS
    if path.exists():
        log(f"exported EMA weights to {path} (sha256 {weights.sha256_of(path)})")
    if stop.signum:
        if (out / CHECKPOINT).exists():
            log(f"to continue: python -m minisd train --resume {out / CHECKPOINT} --out {out} ...")
        log_file.close()
        return stop.signum
    for guidance in args.val_guidance:
        if args.val_images:
            log(validate(ema, args.val_images, guidance, seed=args.seed + 1234))
    log_file.close()
    return None


# -------------------------------------------------------------------------------------------- validation


def validate(model, n, guidance, seed):
    """Sample ``n`` random prompts with minisd's own loop (minisd/torch_sampler.py) and score them."""
    from minisd.evaluate import random_prompts, score
    from minisd.torch_sampler import TorchSampler

    model.eval()
    prompts = random_prompts(n, np.random.default_rng(seed))
    accuracy = score(TorchSampler(model)(prompts, 25, guidance, seed), prompts)
    return f"validation ({checks.plural(n, 'image')}, DDIM 25 steps, guidance {guidance}): " + ", ".join(
        f"{name} {value:.1%}" for name, value in accuracy.items()
    )


def main(argv=None):
    try:
        stopped_by = train(parse_args(argv))
    except CliError as err:
        err.exit()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (setup, final validation): nothing unsaved
        print("\ninterrupted; every file the run wrote is whole", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    if stopped_by:
        sys.exit(128 + stopped_by)  # the shell's convention for "ended by signal N", after a clean save


if __name__ == "__main__":
    main()
