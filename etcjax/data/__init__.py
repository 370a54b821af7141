"""Input pipelines: tfds datasets, image folders and encrypted datasets.

Modules:
  pipeline         the API training uses: dataset_info, train_iterator,
                   eval_iterator, host_encrypts / device_encrypts,
                   encryption_plan.
  sources          splits held for random access (arrays or file lists).
  sampling         deterministic, resumable, per-host example order.
  augment          plain-domain crops, flip, random erasing (tf, per example).
  randaugment      RandAugment operations (tf, per example).
  host_encryption  encryption + JPEG on the host for the jpeg_quality path.
  encrypted_dataset  the encrypted-dataset format: manifest, layout, listing.
  encrypted_writer   writing (resumably) and decrypting encrypted datasets.
  plain_sources    the plain tfds or folder images a data owner encrypts.
  mixing           mixup, CutMix, label smoothing (JAX, in the train step).
  image_folder     listing and reading `root/<class>/<image>` folders.
  tfds_source      whole tfds splits as numpy arrays, never downloading.
  sharding         the 'data' mesh: batches split over every device, the
                   rest replicated (training and the learned attacks).
"""
