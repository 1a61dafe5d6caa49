"""The optimizers ``train.optim_*`` may name: those BasicSR master's ``get_optimizer`` accepts.

PyPI BasicSR 1.4.2 knows only Adam; :func:`basicsr_ext.patches.compat.patch_optimizers` gives it
these, and the option checker names them when an option file misspells one.
"""
import torch

#: By the names BasicSR's option files use.
OPTIMIZERS = {
    'Adam': torch.optim.Adam,
    'AdamW': torch.optim.AdamW,
    'Adamax': torch.optim.Adamax,
    'SGD': torch.optim.SGD,
    'ASGD': torch.optim.ASGD,
    'RMSprop': torch.optim.RMSprop,
    'Rprop': torch.optim.Rprop,
}
