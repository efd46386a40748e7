"""Putting a trained run to work outside fitloop: export (ONNX, torch.export) and serving (HTTP).

    fitloop.integrations.export       `fitloop export`: ONNX / torch.export files, verified against fitloop
    fitloop.integrations.serve        `fitloop serve`: the run's model over HTTP (FastAPI + uvicorn)
    fitloop.integrations.serve_input  request bodies (JSON records, CSV) checked and turned into model inputs
    fitloop.integrations.serve_ops    metrics, the JSON request log, the API-key gate (ASGI middleware)

Each module imports its optional dependencies inside its functions, so importing this package is free.
"""
