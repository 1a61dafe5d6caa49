"""What changes BasicSR: the patches that make PyPI BasicSR 1.4.2 run on today's stack.

:mod:`.hook` applies them in every process that imports BasicSR; :mod:`.compat` is their
registry (each patch names the upstream breakage it works around and applies only when needed);
:mod:`.safety` holds those that keep long runs from losing work; :mod:`.testsets` is the one
applied around ``basicsr test`` only.
"""
