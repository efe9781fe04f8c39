"""mxrc: a production runtime for robot controllers."""

__version__ = "0.1.0"
