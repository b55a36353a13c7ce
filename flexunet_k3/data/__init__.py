"""Data: MSD conversion, synthetic phantoms, image/mask reading, augmentation, the loader."""
