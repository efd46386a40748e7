"""The baseline for bench/studies/serve.py: a minimal hand-written FastAPI app serving a run's model, no checks.

It reads the same bundle (weights and preprocessing JSON) and encodes the JSON records the way the
run's preprocessor does (standardise, impute with the median, one-hot), column by column with numpy,
then answers class labels. No validation, no metrics, no logs, no auth: what a user would write by
hand in a few minutes, and as fast as that gets. Run: python bench/studies/serve_minimal.py RUN_DIR PORT.
"""

import json
import socket
import sys
from pathlib import Path

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fitloop as fl  # noqa: E402


def build(run_dir: str) -> FastAPI:
    torch.set_num_threads(1)  # as `fitloop serve` does for small models: the same torch settings in both arms
    model = fl.load(Path(run_dir) / "model")
    meta = json.loads((Path(run_dir) / "model" / "fitloop.json").read_text())
    features = meta["preprocessor"]["features"]
    classes = np.array(meta["preprocessor"]["classes"], dtype=object)
    width = sum(1 + f["missing"] if f["kind"] == "numeric" else len(f["categories"]) + 1 + f["missing"]
                for f in features)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request):
        records = await request.json()
        n = len(records)
        X = np.zeros((n, width), dtype=np.float32)
        j = 0
        for f in features:
            values = [r.get(f["name"]) for r in records]
            if f["kind"] == "numeric":
                v = np.array(values, dtype=np.float64)
                miss = np.isnan(v)
                v[miss] = f["median"]
                X[:, j] = (v - f["mean"]) / f["std"]
                j += 1
                if f["missing"]:
                    X[:, j] = miss
                    j += 1
            else:
                index = {c: i for i, c in enumerate(f["categories"])}
                slots = [index.get(v, len(index)) if v is not None else len(index) + f["missing"] for v in values]
                k = len(index) + 1 + f["missing"]
                X[np.arange(n), j + np.array(slots)] = 1.0
                j += k
        with torch.inference_mode():
            out = model(torch.from_numpy(X))
        return JSONResponse({"predictions": classes[out.argmax(-1).numpy()].tolist()})

    return app


def main() -> None:
    run_dir, port = sys.argv[1], int(sys.argv[2])
    app = build(run_dir)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # as fitloop: TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    # the settings `fitloop serve` uses
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="off")
    print(f"listening on {sock.getsockname()[1]}", file=sys.stderr, flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
