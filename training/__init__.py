"""A training run: the checks that refuse a configuration before any work (`checks`) and the job itself —
module, data, trainer, fit, save, score (`job`). What `python train.py` calls."""
