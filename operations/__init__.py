"""Operating a training run, below the entry points: one live run per run directory (`lock`), the run's
config of record and its attempts (`record`: resume restores the run as it was), stopping on a signal
with a resumable checkpoint (`interrupt`), metrics history that survives restarts (`metrics`), a step
progress bar (`progress`), and config type checks before any work (`config_types`).

It knows the layout of a run directory and Lightning's callback/logger interfaces; it knows nothing of
models, losses or data beyond the config keys that name them.
"""
