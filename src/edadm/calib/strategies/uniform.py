"""Uniform: equal counts on `uniform_steps` evenly spaced sampler steps (Q-Diffusion, naive PTQ)."""
from ..select import uniform_counts
from . import register


@register("uniform", "equal counts on evenly spaced sampler steps (Q-Diffusion)")
def allocate(traj, config, num_train_timesteps):
    c = config.calib
    return uniform_counts(traj.num_steps, c.num_samples, num_used=c.uniform_steps), {"uniform_steps": c.uniform_steps}
