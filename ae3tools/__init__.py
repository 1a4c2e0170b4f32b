"""ae3tools: build, verify and flash OpenMV AE3 release artifacts."""

__version__ = "0.1.0"
