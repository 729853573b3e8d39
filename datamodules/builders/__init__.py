"""Generators of the offline datasets, in the hub layouts the readers read: the bundled shapes data (MMEB-train /
MMEB-eval layouts, `bundled`), its MMEB-V2 counterpart with video and visual-document tasks (`bundled_v2`), and the
real-text docstring pairs (`docstrings`). Apart from the readers: nothing in `datamodules` imports them except
`offline`, which builds a dataset on first use."""
