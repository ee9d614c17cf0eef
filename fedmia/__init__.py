"""fedmia: membership-inference auditing for federated segmentation under an adversarial server."""

__version__ = "0.1.0"
