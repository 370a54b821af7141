"""Using a trained model: exports (`export`) and classification (`classifier`).

    from etcjax import inference
    classifier = inference.Classifier("WORKDIR/export")
    labels, probabilities = classifier.classify(images, key=key)

Evaluation and the faces read models through here; training writes the
exports (`etcjax.training.export.save`).
"""

from etcjax.inference.classifier import (Classifier, InputError, Model,
                                         model_inputs, normalize)
from etcjax.inference.export import ExportError, encryption_plan, load, read_info

__all__ = ["Classifier", "ExportError", "InputError", "Model",
           "encryption_plan", "load", "model_inputs", "normalize",
           "read_info"]
