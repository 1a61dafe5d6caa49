"""The training side: ``ASIDModel`` (registered in BasicSR's ``MODEL_REGISTRY`` when
:mod:`.models` is imported) and the compiled training step it runs (:mod:`.train_step`)."""
