"""Train minisd's autoencoder in PyTorch: ``python -m minisd train-vae --minutes 8 --out runs/vae``.

The autoencoder (diffusers' AutoencoderKL: minisd/model.py, configured by
minisd.architecture.default_vae_config()) learns to squeeze a 64x64 image into 4x16x16 latents and to draw
it back, so that a latent minisd runs its UNet on 16x16 latents instead of 64x64 pixels. The loss is Stable
Diffusion's first stage without its perceptual and adversarial terms, both as means per element:

    L1(decode(z), image) + kl_weight * KL(N(mean, var) || N(0, 1)),   z ~ N(mean, var) from the encoder

with kl_weight 1e-6 (--kl-weight): a faint pull of the latents towards N(0, 1) that keeps them bounded.

The machinery is minisd/train.py's: AdamW with a warm-up, an EMA of the weights, bf16 autocast and
channels_last on a GPU, data drawn by CPU worker processes, checkpoints that are one consistent unit, files
written whole or not at all, SIGINT or SIGTERM saves and exits, an --out holding a run resumed (--resume)
or refused (--overwrite to start over).

Every save also encodes --val-images held-out images (from a seed training never draws) with the EMA
weights and stores 1 / the std of their latents' means as the config's ``scaling_factor`` (the latent UNet
sees latents times it: unit variance), and logs the PSNR of their reconstructions. It writes, under --out:
``ckpt.pt`` (+ parts) to resume from, ``vae.safetensors`` (+ .sha256: the EMA weights, for
minisd.weights.load_vae) and ``train.log``.

The images come from ``make_batch(n, rng) -> (images (n, 3, 64, 64) float32 in [-1, 1], prompts)``:
minisd.scenes.make_batch unless ``train`` is given another (the prompts are not used).
"""

import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from minisd import architecture, checks, train, weights
from minisd.checks import CliError
from minisd.model import VAEOnly, count_parameters

KL_WEIGHT = 1e-6
WEIGHTS = "vae.safetensors"
HELD_OUT_SEED = 2**32 - 1  # the held-out images' generator: default_rng([HELD_OUT_SEED, --seed])


def parse_args(argv):
    p = train.run_parser("python -m minisd train-vae", __doc__.split("\n\n")[0], "runs/vae")
    p.set_defaults(batch_size=128, lr=1e-3, warmup=200, ema_decay=0.999)
    p.add_argument("--kl-weight", type=float, default=KL_WEIGHT, help="weight of the KL term (see above)")
    p.add_argument("--val-images", type=int, default=256, help="held-out images for scaling_factor and PSNR")
    return train.parse_run_args(p, argv)


def check_args(args):
    """Every option, before a file is touched or the model built."""
    train.check_run_args(args)
    checks.number_range("kl_weight", args.kl_weight, 0)
    checks.int_range("val_images", args.val_images)


def scenes_batches():
    """minisd.scenes.make_batch, the 64x64 scenes a latent minisd learns to draw."""
    try:
        from minisd import scenes
    except ImportError as err:
        raise CliError(
            f"the autoencoder trains on minisd.scenes' images, which cannot be imported ({err})"
        ) from None
    return scenes.make_batch


class ImageBatches(torch.utils.data.IterableDataset):
    """An endless stream of image batches from ``make_batch``; each worker draws from its own generator."""

    def __init__(self, make_batch, batch_size, seed):
        self.make_batch, self.batch_size, self.seed = make_batch, batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([*self.seed, info.id if info else 0])
        while True:
            yield torch.from_numpy(self.make_batch(self.batch_size, rng)[0])


def batches(args, start_step, make_batch):
    dataset = ImageBatches(make_batch, args.batch_size, seed=[args.seed, start_step])  # fresh after a resume
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 2)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,  # the dataset already yields whole batches
        num_workers=workers,
        pin_memory=args.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=workers > 0,
        worker_init_fn=train.ignore_stop_signals,
    )
    return iter(loader)


def held_out_images(make_batch, n, seed):
    """The ``n`` images every save measures, from a generator training never uses."""
    return torch.from_numpy(make_batch(n, np.random.default_rng([HELD_OUT_SEED, seed]))[0])


def check_images(images, config):
    """The images fit the autoencoder of ``config``: float32 (n, in_channels, H, W), H and W multiples of
    the latents' scale, so that a reconstruction has the image's size."""
    spec = architecture.read_vae(config)
    scale = 2**spec.downsamplings
    _, c, h, w = images.shape if images.ndim == 4 else (None, None, 1, 1)
    if images.dtype != torch.float32 or c != spec.in_channels or h % scale or w % scale:
        raise CliError(
            f"make_batch gave {images.dtype} images of shape {tuple(images.shape)}; the autoencoder needs "
            f"float32 (n, {spec.in_channels}, H, W) with H and W multiples of {scale}"
        )


def vae_loss(vae, images, kl_weight, generator=None):
    """-> (loss, its L1 reconstruction part): see the module's docstring."""
    mean, logvar = vae.encode(images)
    noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
    reconstruction = vae.decode(mean + torch.exp(0.5 * logvar) * noise)
    l1 = F.l1_loss(reconstruction.float(), images)
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    return l1 + kl_weight * kl, l1


@torch.no_grad()
def measure(vae, images, chunk=256):
    """-> (std of the latents' means, PSNR in dB of the images decoded from them), on ``images``.

    PSNR counts the [-1, 1] range as the peak (so it is that of 0..1 pixels): 10 log10(2^2 / MSE)."""
    means, squared = [], 0.0
    for part in images.split(chunk):
        mean, _ = vae.encode(part)
        squared += float((vae.decode(mean).clamp(-1, 1) - part).double().square().sum())
        means.append(mean.double())
    mse = squared / images.numel()
    return float(torch.cat(means).std()), 10 * math.log10(4.0 / mse) if mse > 0 else math.inf


def prepare(args, config):
    """The run's folder and the model (resumed or new), once ``check_args`` passed; ``config``
    ({"vae": ...}) for a new run, where None is minisd's autoencoder (a resumed run keeps its checkpoint's)."""
    out, resumed = train.open_run(args, WEIGHTS)
    torch.manual_seed(args.seed)  # a new run's initial weights
    try:
        model = VAEOnly(resumed[0]["config"] if resumed else config)
    except architecture.ConfigError as err:
        raise CliError(f"{'--resume ' + args.resume if resumed else 'the config'}: {err}") from None
    return (out, *train.restore(args, resumed, model))


def train_vae(args, make_batch=None, config=None):
    """The training run; returns the signal number that stopped it early, or None.

    ``make_batch`` draws the images (default: minisd.scenes.make_batch); ``config`` builds a new run's
    autoencoder (default: minisd's)."""
    check_args(args)  # every option, then the data and the --resume file, before a file is written
    make_batch = make_batch or scenes_batches()
    out, model, ema, step, elapsed_before = prepare(args, config)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, fused=on_gpu)
    held_out = held_out_images(make_batch, args.val_images, args.seed)
    check_images(held_out, model.config)
    held_out = held_out.to(device)

    log_file = open(out / "train.log", "a")  # noqa: SIM115  (kept open for the whole run)

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    gpu = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    log(
        f"minisd train-vae: {count_parameters(model):,} parameters on {gpu}, from step {step}, args {vars(args)}"
    )

    saved_step = step  # what --out (or --resume) already holds: a save with nothing new is skipped

    def save():
        """The checkpoint, then the EMA weights with the scaling_factor measured on them."""
        nonlocal saved_step
        if step == saved_step:
            return
        std, psnr = measure(ema.vae, held_out)
        model.config["vae"]["scaling_factor"] = 1.0 / std
        train.save_checkpoint(out / train.CHECKPOINT, model, ema, step, elapsed_before + time.time() - start)
        weights.save(ema.state_dict(), model.config, out / WEIGHTS)
        log(
            f"step {step}: latents' std {std:.4g}, so scaling_factor {1.0 / std:.4g}; "
            f"PSNR {psnr:.2f} dB on {checks.plural(len(held_out), 'held-out image')} (EMA weights)"
        )
        saved_step = step

    stream = batches(args, step, make_batch)
    start, first_step, losses, l1s, waited = time.time(), step, [], [], 0.0
    last_save = start
    budget_s = args.minutes * 60 if args.minutes is not None else math.inf
    model.train()
    with train.StopOnSignal() as stop:
        while (
            not stop.signum and (args.steps is None or step < args.steps) and time.time() - start < budget_s
        ):
            t0 = time.time()
            images = next(stream)
            waited += time.time() - t0
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            for group in opt.param_groups:  # warm up again after a resume: Adam's moments start from zero
                group["lr"] = args.lr * min(1.0, (step - first_step + 1) / args.warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
                loss, l1 = vae_loss(model.vae, images, args.kl_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            train.update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))

            losses.append(loss.detach())
            l1s.append(l1.detach())
            if step % args.log_every == 0:
                seconds = time.time() - start
                rate = (step - first_step) * args.batch_size / seconds
                mean, mean_l1 = torch.stack(losses).mean().item(), torch.stack(l1s).mean().item()
                log(
                    f"step {step:6d}  loss {mean:.5f}  L1 {mean_l1:.5f}  {rate:7.0f} img/s  "
                    f"data wait {waited:5.1f} s  {seconds:6.0f} s"
                )
                losses, l1s = [], []
            if time.time() - last_save >= args.save_every * 60:  # a run killed by a time limit keeps its work
                save()
                last_save = time.time()

        seconds = time.time() - start
        by = f" by {signal.Signals(stop.signum).name}" if stop.signum else ""
        log(
            f"stopped{by} at step {step} after {seconds:.0f} s ({(elapsed_before + seconds) / 60:.1f} min of "
            "training in all)"
        )
        save()  # still under the handler: a second signal now stops at once, and the last save stays whole
    path = out / WEIGHTS
    if path.exists():
        log(f"exported EMA weights to {path} (sha256 {weights.sha256_of(path)})")
    if stop.signum and (out / train.CHECKPOINT).exists():
        log(f"to continue: python -m minisd train-vae --resume {out / train.CHECKPOINT} --out {out} ...")
    log_file.close()
    return stop.signum


def main(argv=None):
    try:
        stopped_by = train_vae(parse_args(argv))
    except CliError as err:
        err.exit()
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (setup): nothing unsaved
        print("\ninterrupted; every file the run wrote is whole", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    if stopped_by:
        sys.exit(128 + stopped_by)  # the shell's convention for "ended by signal N", after a clean save


if __name__ == "__main__":
    main()
