"""Calibration data: FP trajectories and the strategies that pick samples from them."""
from .select import CalibrationSet, assemble, fix_rounding, uniform_counts
from .trajectories import Trajectories, collect_trajectories

__all__ = ["CalibrationSet", "Trajectories", "assemble", "collect_trajectories", "fix_rounding", "uniform_counts"]
