"""The drift demo's shifts, measured: how far the monitor sees them move, and how often two models
fitted on the same data agree on them (issue 17; ``mlkube demo drift --shift``).

    .venv/bin/python benchmarks/drift_shift.py [--requests 1000]

On the bundled data, prepared with the default split, for each traffic of
``mlkube.local.drift_demo`` (its own rows: ``held_out_rows`` unshifted, ``shifted_rows`` with
``in-support`` and ``out-of-range``), cycled to ``--requests`` rows as the demo sends them:

- the highest feature PSI against the training profile, as the monitor computes it
  (``mlkube.drift.psi`` on the profile's bins; the monitor's threshold is 0.2);
- for pairs of models as the demo trains them, a champion (seed 0, E epochs) and a challenger
  (seed 1, 2E epochs), over the learning rates 3e-4, 3e-3 and 3e-2, the layer sizes 16, 32, 64-32
  and 128-64 and E of 1, 3, 4, 8 and 30: their test-split accuracies (register's offline gate: the
  challenger must score more), and their label agreement on each traffic's distinct rows (the
  shadow gate asks ``registry.min_agreement``, 0.9, over the live requests it mirrors).

The models are trained with ``mlkube.model.Trainer``, the train step's loop, on the CPU. Prints
a table and writes ``benchmarks/results/drift_shift.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "drift_shift.json"
LEARNING_RATES = (3e-4, 3e-3, 3e-2)
HIDDEN = ([16], [32], [64, 32], [128, 64])
EPOCHS = (1, 3, 4, 8, 30)  # 4: the tests' pinned model; 30: the default model.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000,
                        help="rows of each traffic, cycled, as one window (the runtime's 1000)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from mlkube import data, drift, model, profile
    from mlkube.config import DataConfig, ModelConfig
    from mlkube.local import drift_demo

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="drift-shift-"))
    dataset, info, _ = data.prepare(str(data.demo_data(root)), DataConfig(), root)
    uri = str(dataset)
    training = json.loads((dataset / profile.PROFILE_FILE).read_text())["features"]
    traffics = {"unshifted": drift_demo.held_out_rows(uri)}
    for shift in drift_demo.SHIFTS:
        traffics[shift] = drift_demo.shifted_rows(uri, shift)[0]

    def highest_psi(rows: list[list[float]]) -> tuple[str, float]:
        window = np.asarray([rows[i % len(rows)] for i in range(args.requests)])
        found = {name: drift.psi(training[name]["counts"],
                                 profile.bin_counts(training[name]["edges"],
                                                    window[:, i]).tolist())
                 for i, name in enumerate(info.features)}
        name = max(found, key=lambda k: found[k])
        return name, round(found[name], 3)

    splits = model.load_splits(uri, info)
    x_test, y_test = data.load_arrays(uri, "test")

    def fit(seed: int, epochs: int, hidden: list[int], lr: float) -> Any:
        params = ModelConfig(seed=seed, epochs=epochs, hidden_sizes=hidden, learning_rate=lr)
        net = model.build(splits, params)
        trainer = model.Trainer(net, splits, params, on=torch.device("cpu"))
        for _ in range(epochs):
            trainer.run_epoch()
        net.eval()
        return net

    def labels(net: Any, rows: Any) -> Any:
        with torch.no_grad():
            return net(torch.tensor(np.asarray(rows), dtype=torch.float32)).argmax(-1).numpy()

    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}",
        "requests": args.requests,
        "traffic": {name: {"rows": len(rows), "highest_psi": highest_psi(rows)}
                    for name, rows in traffics.items()},
        "pairs": [],
    }
    for hidden in HIDDEN:
        for lr in LEARNING_RATES:
            for epochs in EPOCHS:
                champion, challenger = fit(0, epochs, hidden, lr), fit(1, 2 * epochs, hidden, lr)
                accuracy = [float((labels(m, x_test) == y_test).mean())
                            for m in (champion, challenger)]
                report["pairs"].append({
                    "hidden": hidden, "learning_rate": lr, "epochs": [epochs, 2 * epochs],
                    "test_accuracy": [round(a, 4) for a in accuracy],
                    "better_offline": accuracy[1] > accuracy[0],
                    "agreement": {name: round(float((labels(champion, rows) ==
                                                     labels(challenger, rows)).mean()), 3)
                                  for name, rows in traffics.items()}})
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")

    for name, numbers in report["traffic"].items():
        print(f"{name:13s} {numbers['rows']:4d} distinct rows, highest PSI "
              f"{numbers['highest_psi'][1]:.3f} ({numbers['highest_psi'][0]})")
    print(f"\n{'hidden':8s} {'lr':6s} {'epochs':6s} {'test accuracy':17s} "
          + " ".join(f"{name:>12s}" for name in traffics))
    for pair in report["pairs"]:
        a, b = pair["test_accuracy"]
        print(f"{','.join(map(str, pair['hidden'])):8s} {pair['learning_rate']:<6g} "
              f"{pair['epochs'][0]:>2d}/{pair['epochs'][1]:<3d} {a:.4f}->{b:.4f} "
              f"{'better' if pair['better_offline'] else '      '} "
              + " ".join(f"{pair['agreement'][name]:12.3f}" for name in traffics))
    for name in traffics:
        trained = [p["agreement"][name] for p in report["pairs"] if p["test_accuracy"][0] >= 0.9]
        print(f"{name}: agreement {min(trained):.3f}..{max(trained):.3f} over the "
              f"{len(trained)} pairs whose champion scores >= 0.9; >= 0.9 in "
              f"{sum(a >= 0.9 for a in trained)}")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
