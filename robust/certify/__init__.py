"""Certified robustness: randomized smoothing and interval bound propagation."""
