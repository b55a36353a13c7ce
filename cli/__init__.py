"""The `flexunet` command line (installed as flexunet_k3.cli). Keras is imported inside commands."""
