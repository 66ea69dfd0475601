"""TDAC (EDA-DM): counts from the density and variety of the steps' feature maps."""
from ..tdac import tdac_allocation
from . import register


@register("tdac", "EDA-DM's temporal distribution alignment (density + variety of features)", needs_features=True)
def allocate(traj, config, num_train_timesteps):
    c = config.calib
    res = tdac_allocation(traj.features.distances(), traj.features.variety_pairs(), c.num_samples,
                          lam=c.tdac_lambda, radius=c.tdac_radius, radius_quantile=c.tdac_radius_quantile)
    return res.counts, {"radius": res.radius, "radius_quantile": res.radius_quantile, "lambda": c.tdac_lambda,
                        "density": res.density.tolist(), "variety": res.variety.tolist(),
                        "weights": res.weights.tolist()}
