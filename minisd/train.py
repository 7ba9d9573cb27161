"""Train minisd in PyTorch: ``python -m minisd train --minutes 8 --out runs/minisd``.

The recipe is Stable Diffusion's, shrunk: noise a clean image to a random timestep, ask the UNet for the
noise (epsilon), minimise the squared error. On top of that, the pieces that make a short run work:

* AdamW, with a short learning-rate warm-up (also after a resume, since Adam's moments are not saved);
* an exponential moving average (EMA) of the weights, which samples much better than the raw weights;
* 10 % of prompts replaced by "" so the same model also predicts unconditionally: classifier-free guidance;
* bf16 autocast + channels_last on a GPU; data drawn by CPU worker processes so the GPU never waits.

It writes, under --out: ``ckpt.pt`` (+ ``ckpt.part*.pt``) to resume from, ``minisd.safetensors`` (+ .sha256),
the EMA weights for minisd.generate, and ``train.log``. At the end it samples images with minisd's own
sampling loop (the one minisd.generate runs) and scores them with minisd.checker, so a run says itself
whether the model follows its prompts.
"""

import argparse
import copy
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minisd import data, text, weights
from minisd.model import MiniSD, count_parameters
from minisd.schedulers import DDPMScheduler

CFG_DROPOUT = 0.1  # fraction of prompts replaced by "" (the unconditional prompt)
PART_BYTES = 12 << 20  # checkpoint shards stay under the 16 MiB a file the course's GPU runner returns


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m minisd train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/minisd", help="folder for checkpoint, weights and log")
    p.add_argument("--resume", help="ckpt.pt of an earlier run to continue from")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in all")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training wall time")
    # Large batches pay: at 32x32 a step costs about the same from 256 to 1024 images (launch-bound).
    p.add_argument("--batch-size", type=int, default=1024, help="images a step (256 if memory is short)")
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--warmup", type=int, default=300, help="linear learning-rate warm-up, in steps")
    p.add_argument("--ema-decay", type=float, default=0.9995)
    p.add_argument("--workers", type=int, default=None, help="data worker processes (default: CPUs - 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--val-images", type=int, default=256, help="images sampled and checked at the end")
    p.add_argument(
        "--val-guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="scales to check"
    )
    p.add_argument("--save-every", type=float, default=3.0, help="minutes between checkpoints")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.steps is None and args.minutes is None:
        p.error("give --steps or --minutes (or both) so the run knows when to stop")
    return args


class RandomBatches(torch.utils.data.IterableDataset):
    """An endless stream of (images, token ids) batches; each worker draws from its own seeded generator."""

    def __init__(self, batch_size, seed):
        self.batch_size, self.seed = batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([*self.seed, info.id if info else 0])
        while True:
            images, prompts = data.make_batch(self.batch_size, rng)
            yield torch.from_numpy(images), torch.from_numpy(text.tokenize(prompts))


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
    )
    return iter(loader)


# ----------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, model, ema, step, elapsed):
    """model + EMA in float32, split into parts of <= 12 MiB next to a small index file ``path``.

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
    names = [f"{path.stem}.part{i}.pt" for i in range(len(parts))]
    for name, part in zip(names, parts, strict=True):
        torch.save(part, path.with_name(name))
    index = {"step": step, "elapsed": elapsed, "config": model.config, "parts": names}
    torch.save(index, path)


def load_checkpoint(path, model, ema):
    path = Path(path)
    index = torch.load(path, map_location="cpu")
    tensors = {}
    for name in index["parts"]:
        tensors |= torch.load(path.with_name(name), map_location="cpu")
    for prefix, module in (("model.", model), ("ema.", ema)):
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    return index["step"], index["elapsed"]


# -------------------------------------------------------------------------------------------- training


@torch.no_grad()
def update_ema(ema, model, decay):
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def diffusion_loss(model, images, ids, alphas_cumprod, generator=None):
    """Noise each image to a random timestep; mean squared error of the predicted noise."""
    n = images.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (n,), device=images.device, generator=generator)
    noise = torch.randn(images.shape, device=images.device, generator=generator)
    a = alphas_cumprod[t].view(n, 1, 1, 1)
    noisy = a.sqrt() * images + (1 - a).sqrt() * noise
    eps = model(noisy, t, ids)
    return F.mse_loss(eps.float(), noise)


def train(args):
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.manual_seed(args.seed)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = MiniSD()
    ema = copy.deepcopy(model).requires_grad_(False)
    step, elapsed_before = 0, 0.0
    if args.resume:
        step, elapsed_before = load_checkpoint(args.resume, model, ema)
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    ema.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, fused=on_gpu)
    alphas_cumprod = torch.tensor(
        DDPMScheduler.from_config(model.config["scheduler"]).alphas_cumprod, device=device
    )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "train.log", "a")  # noqa: SIM115  (kept open for the whole run)

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    gpu = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    log(f"minisd train: {count_parameters(model):,} parameters on {gpu}, from step {step}, args {vars(args)}")

    def save():  # a checkpoint to resume from, and the EMA weights minisd.generate loads
        save_checkpoint(out / "ckpt.pt", model, ema, step, elapsed_before + time.time() - start)
        return weights.save(ema.state_dict(), model.config, out / "minisd.safetensors")

    stream = batches(args, step)
    start, first_step, losses, waited = time.time(), step, [], 0.0
    last_save = start
    budget_s = args.minutes * 60 if args.minutes is not None else math.inf
    model.train()
    while (args.steps is None or step < args.steps) and time.time() - start < budget_s:
        t0 = time.time()
        images, ids = next(stream)
        waited += time.time() - t0
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        ids = ids.to(device, non_blocking=True)
        drop = torch.rand(ids.shape[0], device=device) < CFG_DROPOUT
        ids = ids.masked_fill(drop[:, None], 0)  # all <pad> = the empty prompt ""

        for group in opt.param_groups:  # warm up again after a resume: Adam's moments start from zero
            group["lr"] = args.lr * min(1.0, (step - first_step + 1) / args.warmup)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            loss = diffusion_loss(model, images, ids, alphas_cumprod)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        # Early on the average should forget its random start quickly: decay grows towards ema_decay.
        update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))

        losses.append(loss.detach())
        if step % args.log_every == 0:
            seconds = time.time() - start
            rate = (step - first_step) * args.batch_size / seconds
            mean = torch.stack(losses).mean().item()
            log(
                f"step {step:6d}  loss {mean:.4f}  {rate:7.0f} img/s  data wait {waited:5.1f} s  {seconds:6.0f} s"
            )
            losses = []
        if time.time() - last_save > args.save_every * 60:  # a run killed by a time limit keeps its work
            save()
            last_save = time.time()

    elapsed = elapsed_before + time.time() - start
    log(
        f"stopped at step {step} after {time.time() - start:.0f} s ({elapsed / 60:.1f} min of training in all)"
    )
    path = save()
    log(f"exported EMA weights to {path} (sha256 {weights.sha256_of(path)})")
    for guidance in args.val_guidance:
        if args.val_images:
            log(validate(ema, args.val_images, guidance, seed=args.seed + 1234))
    log_file.close()


# -------------------------------------------------------------------------------------------- validation


def validate(model, n, guidance, seed):
    """Sample ``n`` random prompts with minisd's own loop (minisd/torch_sampler.py) and score them."""
    from minisd.evaluate import random_prompts, score
    from minisd.torch_sampler import TorchSampler

    model.eval()
    prompts = random_prompts(n, np.random.default_rng(seed))
    accuracy = score(TorchSampler(model)(prompts, 25, guidance, seed), prompts)
    return f"validation ({n} images, DDIM 25 steps, guidance {guidance}): " + ", ".join(
        f"{name} {value:.1%}" for name, value in accuracy.items()
    )


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
