"""RSSN: the composition route of the GFM paper, plus the image I/O every command shares."""

__version__ = "0.1.0"
