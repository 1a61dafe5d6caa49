"""Pieces the commands and the training model share: option checking, data checks, image
reading and writing, results tables, errors. Nothing here patches BasicSR or parses arguments."""
