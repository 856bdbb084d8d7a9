"""Inference engine: image preprocessing, ONNX Runtime embedders and the executors that run them
in-process or on Ray actors. Importing this package imports neither onnxruntime nor ray."""
