"""The model layers other code finds by name, defined once (TensorFlow-free, so a command's flag
checks can import it): models.py names them; classical.py reads the features, Grad-CAM and
temperature scaling (training/finetune.py) the float32 softmax."""

EMBEDDING_LAYER = "embedding"  # the penultimate features (the classical classifiers' input)
OUTPUT_LAYER = "probabilities"  # the float32 softmax over the classes
