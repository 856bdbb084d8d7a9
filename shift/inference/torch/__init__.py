"""The torch backend: an ONNX graph converted by onnx2torch (``convert``), checked against ONNX
Runtime once per model (``check``), converted modules cached on disk (``cache``), and the backend
registered as ``"torch"`` (``backend``)."""
