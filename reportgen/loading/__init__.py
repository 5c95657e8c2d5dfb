"""All input I/O: checkpoints, models and images. Nothing else opens user files."""
