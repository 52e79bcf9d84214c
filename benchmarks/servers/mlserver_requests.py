"""Serialized `ModelInferRequest`s for MLServer, written by MLServer's own interpreter.

Run as a script by the interpreter given to `fraud-bench suite --mlserver-python` (not by
the harness's: MLServer is not one of its dependencies), so that the requests are built
with the generated protobuf classes of the very MLServer being measured:

    PYTHON mlserver_requests.py ROWS.npy OUT MODEL_NAME

ROWS.npy holds one float32 feature row per request; OUT gets, per row, its request's
length (4 bytes, little-endian) and its bytes. Each request carries one FP32 tensor of
shape [1, features], in `contents` (the protocol's typed form, which MLServer's
`NumpyRequestCodec` decodes). Only the standard library, numpy and mlserver are imported.
"""

from __future__ import annotations

import importlib
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INPUT_NAME = "features"


def main(argv: Sequence[str]) -> None:
    """Write the requests of the rows in `argv[0]` to `argv[1]`, for model `argv[2]`."""
    rows_file, out_file, model_name = argv
    dataplane = importlib.import_module("mlserver.grpc.dataplane_pb2")
    tensor = dataplane.ModelInferRequest.InferInputTensor
    rows = np.load(rows_file)
    with Path(out_file).open("wb") as out:
        for number, row in enumerate(rows):
            request = dataplane.ModelInferRequest(
                model_name=model_name,
                id=str(number),
                inputs=[
                    tensor(
                        name=INPUT_NAME,
                        datatype="FP32",
                        shape=[1, len(row)],
                        contents=dataplane.InferTensorContents(fp32_contents=row.tolist()),
                    )
                ],
            )
            payload = request.SerializeToString()
            out.write(struct.pack("<I", len(payload)) + payload)


if __name__ == "__main__":
    main(sys.argv[1:])
