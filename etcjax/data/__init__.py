"""Input pipelines: tfds datasets, image folders and encrypted datasets."""
