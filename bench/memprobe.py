"""Peak-RSS probe: `python -m bench.memprobe W2 hand` trains one arm in a fresh process and prints JSON.

Method: resource.getrusage(RUSAGE_SELF).ru_maxrss (the process high-water mark, KiB on Linux) is read
after building data + model (`base_kib`) and again after training (`peak_kib`).  `train_kib = peak - base`
is what the training loop itself added on top of the data and the model (DataLoader/collate buffers,
optimizer state, shuffled copies, autograd buffers, ...).  Each arm runs in its own process so that one
arm's high-water mark cannot hide another's.
"""

from __future__ import annotations

import json
import resource
import sys


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    wname, arm = argv[0], argv[1]
    import torch

    from .workloads import ARMS, WORKLOADS, fitloop_compile_loop

    torch.set_num_threads(torch.get_num_threads())
    wl = WORKLOADS[wname]
    wl.data()
    model = wl.model()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn = fitloop_compile_loop if arm == "compile" else ARMS[arm]
    r = fn(wl, model)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"workload": wname, "arm": arm, "base_kib": base, "peak_kib": peak,
                      "train_kib": peak - base, "time": r["time"]}))


if __name__ == "__main__":
    main()
