"""Accelerate-based training loops for clipcond, installed as ``clipcond.training``."""
