"""minisd.train on the CPU: a two-step run writes weights that load, and checkpoints resume exactly."""

import numpy as np
import pytest
import torch

from minisd import train, weights
from minisd.model import MiniSD


def test_a_stopping_rule_is_required():
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x"])


def test_loss_is_finite_and_reaches_every_parameter():
    torch.manual_seed(0)
    model = MiniSD()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = torch.zeros(2, 8, dtype=torch.long)
    alphas_cumprod = torch.linspace(0.999, 0.001, 1000)
    loss = train.diffusion_loss(model, images, ids, alphas_cumprod)
    loss.backward()
    assert torch.isfinite(loss) and 0.1 < loss.item() < 10
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == [], "every weight must get a gradient: the text encoder and all UNet blocks"


def test_checkpoint_round_trip_in_small_parts(tmp_path):
    torch.manual_seed(1)
    model, ema = MiniSD(), MiniSD()
    train.save_checkpoint(tmp_path / "ckpt.pt", model, ema, step=7, elapsed=12.5)
    parts = sorted(tmp_path.glob("ckpt.part*.pt"))
    assert len(parts) >= 2 and all(p.stat().st_size < 16 << 20 for p in parts)
    model2, ema2 = MiniSD(), MiniSD()
    assert train.load_checkpoint(tmp_path / "ckpt.pt", model2, ema2) == (7, 12.5)
    for a, b in ((model, model2), (ema, ema2)):
        for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(x, y), key


@pytest.mark.slow
def test_two_steps_then_resume(tmp_path):
    common = ["--batch-size", "2", "--workers", "0", "--val-images", "2", "--val-guidance", "1.5"]
    train.main(["--steps", "2", "--out", str(tmp_path), *common])
    state, config = weights.load(tmp_path / "minisd.safetensors")
    assert config["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    assert all(np.isfinite(v).all() for v in state.values())
    train.main(["--steps", "3", "--resume", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path), *common])
    log = (tmp_path / "train.log").read_text()
    assert "from step 2" in log and "stopped at step 3" in log and "validation (2 images" in log
