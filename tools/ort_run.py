"""Runs an ONNX model with ONNX Runtime (CPU) on one .npy input and saves the first output as
.npy. Used by cnnkit-onnx's tests to check exported models.

Usage: python tools/ort_run.py MODEL.onnx IN.npy OUT.npy
"""
import sys

import numpy as np
import onnxruntime as ort

model, inp, out = sys.argv[1:4]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
x = np.load(inp)
y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
np.save(out, np.ascontiguousarray(y, dtype=np.float32))
