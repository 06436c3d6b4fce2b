"""dlarena: compare deep learning frameworks honestly, on the same networks, in isolated processes."""

__version__ = "0.1.0"
