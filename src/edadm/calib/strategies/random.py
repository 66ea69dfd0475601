"""Random: each calibration sample from a uniformly drawn sampler step."""
from ..select import random_counts
from . import register


@register("random", "steps drawn uniformly at random")
def allocate(traj, config, num_train_timesteps):
    return random_counts(traj.num_steps, config.calib.num_samples, seed=config.seed), {}
