"""klqp's version, in a module that imports nothing, so that klqp's own modules
(klqp/checkpoint.py records it in each file) need not import the package."""

__version__ = "0.1.0"
