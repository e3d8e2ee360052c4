"""The pipeline: a complete series through the model to results, in the node or offline."""
