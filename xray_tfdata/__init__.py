"""xray_tfdata: chest X-ray folders -> sharded TFRecords -> tf.data -> distributed training.

Stages of the data's journey, one module each:
  sources -> image_io -> offline_augment -> dedupe -> shard_plan -> writer -> convert
  (records on disk, described by features + manifest)
  decode -> online_augment -> pipeline -> models -> training -> evaluation / export
"""

__version__ = "0.1.0"
