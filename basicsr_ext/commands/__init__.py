"""The ``basicsr`` command (:mod:`.cli`) and its subcommands, one module each, thin over the
network (:mod:`asid_arch`), the training model and the shared pieces (:mod:`basicsr_ext.common`)."""
