"""What a run prints: each Lightning log line once (issue 22: every Lightning INFO line came twice, once from the
console handler Lightning adds to its `lightning` logger at import — "INFO: Seed set to 42" — and once from the
root logger's handlers that Hydra's job logging installs). End to end, the resumed run of
tests/entrypoints/test_resume.py::test_sigterm_saves_the_current_step_and_the_readme_command_resumes_it counts
"`Trainer.fit` stopped" in its output."""

from __future__ import annotations

import io
import logging

import lightning

from operations.hydra_app import LIGHTNING_LOGGERS, quiet_known_noise


def test_a_lightning_info_line_is_logged_once():
    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
             for name in LIGHTNING_LOGGERS}
    root, hydra_console, lightning_console = logging.getLogger(), io.StringIO(), io.StringIO()
    hydra_handler = logging.StreamHandler(hydra_console)  # Hydra's job logging: a handler on the root logger
    hydra_handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))
    # The state the imports leave: Lightning's own console handler ("INFO: …") on `lightning`, propagating to root.
    own = logging.StreamHandler(lightning_console)
    own.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("lightning").addHandler(own)
    logging.getLogger("lightning").propagate = True
    root.addHandler(hydra_handler)
    try:
        quiet_known_noise()  # what train.py's and evaluate.py's jobs call first
        lightning.seed_everything(1234)
    finally:
        root.removeHandler(hydra_handler)
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:] = handlers
            logger.propagate = propagate
    output = hydra_console.getvalue() + lightning_console.getvalue()
    assert output.count("Seed set to 1234") == 1, output
    assert "[lightning.fabric.utilities.seed][INFO] - Seed set to 1234" in hydra_console.getvalue()  # via Hydra
