"""TDAC (EDA-DM): counts from the density and variety of the steps' feature maps."""
from ..select import uniform_counts
from ..tdac import tdac_allocation
from . import register


@register("tdac", "EDA-DM's temporal distribution alignment (density + variety of features)",
          needs_features=True, options=("tdac_lambda", "tdac_radius", "tdac_radius_quantile", "tdac_uniform_share", "tdac_trajectories"))
def allocate(traj, config, num_train_timesteps):
    c = config.calib
    num_uniform = round(c.num_samples * c.tdac_uniform_share)
    res = tdac_allocation(traj.features.distances(), traj.features.variety_pairs(), c.num_samples - num_uniform,
                          lam=c.tdac_lambda, radius=c.tdac_radius, radius_quantile=c.tdac_radius_quantile)
    counts = res.counts
    if num_uniform:
        counts = counts + uniform_counts(traj.num_steps, num_uniform, num_used=c.uniform_steps)
    return counts, {"radius": res.radius, "radius_quantile": res.radius_quantile, "lambda": c.tdac_lambda,
                    "uniform_share": c.tdac_uniform_share, "density": res.density.tolist(),
                    "variety": res.variety.tolist(), "weights": res.weights.tolist()}
