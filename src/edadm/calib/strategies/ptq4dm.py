"""PTQ4DM: timesteps drawn from a normal distribution over t / T (NDTC)."""
from ..select import ptq4dm_counts
from . import register


@register("ptq4dm", "timesteps from a normal over t / T (PTQ4DM's NDTC)", options=("ptq4dm_mean", "ptq4dm_std"))
def allocate(traj, config, num_train_timesteps):
    c = config.calib
    return (ptq4dm_counts(traj.ts, c.num_samples, num_train_timesteps, c.ptq4dm_mean, c.ptq4dm_std, config.seed),
            {"mean": c.ptq4dm_mean, "std": c.ptq4dm_std})
