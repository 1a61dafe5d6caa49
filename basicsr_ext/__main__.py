"""``python -m basicsr_ext`` is the ``basicsr`` command (handy under ``torchrun -m``)."""
import sys

from basicsr_ext.commands.cli import main

sys.exit(main())
