"""What changes BasicSR: the patches that make PyPI BasicSR 1.4.2 run on today's stack.

:mod:`.hook` applies them in every process that imports BasicSR (the installed start-up line
installs it); :mod:`.compat` is their registry, with the patches for today's torch, torchvision
and Python; :mod:`.safety` holds those that keep long runs from losing work; :mod:`.pipeline`
hands a checked run to BasicSR's own pipelines and keeps its boilerplate off the terminal.
Each patch names in its docstring the upstream breakage it works around, applies only when
the running stack needs it, and has a test (tests/test_compat.py). docs/compatibility.md
describes them for users.
"""
