"""Calibration data: FP trajectories and the strategies that pick samples from them."""
from .counts import fix_rounding
from .select import CalibrationSet, assemble, ptq4dm_counts, random_counts, uniform_counts
from .tdac import TdacAccumulator, TdacResult, auto_radius, tdac_allocation
from .trajectories import Trajectories, collect_trajectories

__all__ = ["CalibrationSet", "TdacAccumulator", "TdacResult", "Trajectories", "assemble", "auto_radius",
           "collect_trajectories", "fix_rounding", "ptq4dm_counts", "random_counts", "tdac_allocation",
           "uniform_counts"]
