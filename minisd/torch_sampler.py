"""minisd's sampling loop (minisd.pipeline) on the PyTorch model: what training validates with and what
``python -m minisd bench`` times PyTorch with.

Same plan (timesteps and step coefficients from the scheduler config the model carries), same prompt rows,
same initial noise (minisd's ``randn`` of the seed), same guidance and DDIM step, then the same decoding
of the latents by the autoencoder as ``minisd.generate``: a seed gives its picture, up to float32 rounding.

    images = TorchSampler(model)(prompts, num_inference_steps=25, guidance_scale=1.5, seed=0)  # uint8
"""

import torch

from minisd.ops import Ops
from minisd.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, SamplingPlan, denoise, to_uint8
from minisd.schedulers import DDIMScheduler
from minisd.text import tokenize


class TorchOps:
    """The three array ops of the sampling loop (minisd.pipeline.denoising_step) on torch tensors."""

    @staticmethod
    def concat_batch(a, b):
        return torch.cat([a, b])

    @staticmethod
    def cfg_combine(eps_uncond, eps_cond, guidance_scale):
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    @staticmethod
    def scheduler_step(sample, eps, noise, coef, clip=None):
        return coef.apply(sample, eps, noise, clip)


class TorchSampler:
    """Sample minisd.model.MiniSD ``model`` on its device. ``unet`` replaces ``model.unet`` (e.g. a
    ``torch.compile``d one; ``compiled`` marks each step for its CUDA graphs)."""

    def __init__(self, model, unet=None, compiled=False):
        # `is None`, not `or`: a torch.compile'd module has no truth value (bool() calls the UNet's missing len())
        self.model, self.compiled = model, compiled
        self.unet = model.unet if unet is None else unet
        self.scheduler = DDIMScheduler.from_config(model.config["scheduler"])
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def __call__(self, prompts, num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=0):
        """Prompts -> (N, H, W, 3) uint8 images."""
        size = self.model.unet.sample_size
        plan = SamplingPlan.make(
            self.scheduler, len(prompts), num_inference_steps, guidance_scale, size, size
        )
        ids = torch.from_numpy(tokenize(plan.prompt_rows(prompts))).to(self.device)
        context = self.model.text_encoder(ids)
        noise = Ops("numpy").randn(plan.noise_shape(self.model.config["unet"]["in_channels"]), seed)

        def predict_noise(i, rows):
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs may be overwritten
            t = torch.full((rows.shape[0],), float(plan.timesteps[i]), device=self.device)
            return self.unet(rows, t, context).float()

        x = denoise(TorchOps, plan, torch.from_numpy(noise).to(self.device), predict_noise)
        vae = self.model.vae
        if vae is not None:  # latents -> pixels
            x = vae.decode((x / self.model.config["vae"]["scaling_factor"]).to(next(vae.parameters()).dtype))
        return to_uint8(x.float().cpu().numpy())
