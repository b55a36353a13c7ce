"""The architectures `model.name` can pick: each name and its builder, as "module:function".

config.py checks a name here and flexunet_k3.models builds from it, so the config never imports
the models. Importing this module imports nothing.
"""

ARCHITECTURES = {"flexunet": "flexunet_k3.models.flexunet:build_flexunet"}
