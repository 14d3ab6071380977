"""mp3kit: multi-label image classification on PASCAL VOC 2007, for coursework."""

__version__ = "0.1.0"
