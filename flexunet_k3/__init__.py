"""flexunet-k3: 2D segmentation UNets on any Keras 3 backend.

Importing this package imports neither keras nor a backend: choose the backend first
(`flexunet_k3.backend.select_backend`), then import the modules that need keras.
"""

__version__ = "0.1.0"
