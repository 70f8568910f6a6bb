"""Flow-matching conventions of WVM, one convention for both streams: Wan's.

    x_s = (1 - s) * x0 + s * eps        s in [0, 1], s = 1 is pure noise
    the network predicts the velocity eps - x0, and sees the timestep 1000 * s

The paper writes y_tau = tau * y + (1 - tau) * eps with target y - eps: the same with tau = 1 - s.
"""
import torch


def shift_sigma(s, shift):
    """Wan's timestep shift s' = shift * s / (1 + (shift - 1) * s): more training time near pure noise."""
    return shift * s / (1 + (shift - 1) * s)


def sample_sigma(n, shift=1.0, generator=None, device=None):
    """n flow times: u ~ U(0, 1), shifted (video: shift 5; value: no shift)."""
    return shift_sigma(torch.rand(n, generator=generator, device=device), shift)


def add_noise(x0, eps, s):
    """x_s for per-sample times s [B] (broadcast over the remaining dims of x0)."""
    s = s.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * eps


def velocity(x0, eps):
    return eps - x0


def euler_sample(velocity_fn, eps, steps=1):
    """Integrate dx/ds = v from s = 1 (noise) to s = 0 with uniform Euler steps; velocity_fn(x, s) with s a float.

    One step (the paper's inference) is x0 = eps - v(eps, 1).
    """
    if steps < 1:  # the noise itself would be returned as the sample
        raise ValueError(f"steps {steps}: at least one Euler step")
    x = eps
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
    for s, s_next in zip(grid[:-1], grid[1:]):
        x = x + (s_next - s) * velocity_fn(x, s)
    return x
