"""Shared pieces: reading and checking option files and data, images, checkpoints, ONNX, results
tables, errors. They patch nothing and parse no command line; the patches, the training model
and the commands stand on them."""
