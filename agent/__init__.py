"""nat-ha agent: the daemon that keeps a NAT instance group's route tables served."""

__version__ = "0.1.0"
