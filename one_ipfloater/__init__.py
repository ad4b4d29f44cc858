"""one-ipfloater: AWS/OpenStack-style floating IPs for OpenNebula clouds."""

__version__ = "0.1.0"
