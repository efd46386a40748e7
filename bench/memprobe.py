"""Peak-RSS probe: `python -m bench.memprobe W2 hand` trains one arm in a fresh process and prints JSON.

Method (Linux): the per-process high-water RSS `VmHWM` from /proc/self/status.  After building data and
model we read the current RSS (`base`), reset the high-water mark to it (`echo 5 > /proc/self/clear_refs`),
train, and read `VmHWM` again (`peak`).  `train = peak - base` is what the training loop itself added on
top of data + model (DataLoader/collate buffers, optimizer state, shuffled copies, autograd buffers).
Each arm runs in its own process so one arm's high-water mark cannot hide another's.

(`resource.getrusage().ru_maxrss` is not used: Linux carries the parent's high-water mark across
fork+exec, so a child spawned by a 500 MB parent reports >= 500 MB whatever it does.)
"""

from __future__ import annotations

import json
import sys


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def main(argv=None):
    argv = argv if argv is not None else sys.argv[1:]
    wname, arm = argv[0], argv[1]
    import torch  # noqa: F401

    from .workloads import ARMS, WORKLOADS, fitloop_compile_loop

    wl = WORKLOADS[wname]
    wl.data()
    model = wl.model()
    base = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    fn = fitloop_compile_loop if arm == "compile" else ARMS[arm]
    r = fn(wl, model)
    peak = _status_kib("VmHWM")
    print(json.dumps({"workload": wname, "arm": arm, "base_kib": base, "peak_kib": peak,
                      "train_kib": peak - base, "hwm_reset": reset, "time": r["time"]}))


if __name__ == "__main__":
    main()
