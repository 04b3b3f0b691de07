"""retool: tool-integrated reasoning — a model that thinks in text and runs Python in a sandbox."""

__version__ = "0.1.0"
