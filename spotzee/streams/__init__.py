"""The topology: topic names, keys, codecs, and the processors wired from domain/."""
