"""dcutr-lab: end-to-end validation of NAT hole punching between private Kaspa nodes."""

__version__ = "0.1.0"
