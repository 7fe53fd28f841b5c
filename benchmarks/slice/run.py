"""Randomized-slice benchmark on Coat (issues 11 and 17), through the CLI only: mean-rating
estimation error with context-only and label-aware propensities, part of the random-assignment test
set used as the slice. Every step is a `causalrm` subprocess; the Python here writes the slice files
and computes the errors.

    .venv/bin/python benchmarks/slice/run.py             # 20 slice draws, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/slice/run.py --seeds 3 --no-label-model-none   # a quick look

Coat (Schnabel et al., 2016): 290 users x 300 jackets = 87,000 exposures; ``train.ascii`` holds
6,960 self-selected ratings (1-5, missing not at random), ``test.ascii`` 4,640 ratings of 16 items
per user assigned at random. A slice of 5% of the test ratings (232; drawn at random, seeded) plays
the randomized slice; the other 95% are the evaluation set, whose mean rating is the truth.

    causalrm ingest COAT/train.ascii --source ratings --warehouse wh \\
        --user-features F/user_features.ascii --item-features F/item_features.ascii
    causalrm propensity fit wh --clip 0.01                      # context p(x): the context SNIPS row
    causalrm propensity fit-label-aware wh --slice slice_0.csv --label-column rating --clip 0.01 --seed 0
    causalrm propensity fit wh --clip 0.01 --id-encodings response_id   # c(x) of the label-aware fit
    # for each draw S:
    causalrm propensity fit-label-aware wh --slice slice_S.csv --label-column rating --clip 0.01 --seed S
    causalrm propensity fit-label-aware wh --slice slice_S.csv --label-column rating --clip 0.01 --seed S \\
        --label-model none --bootstrap 20

``label_aware.json`` of each run gives the naive, context SNIPS, label-aware SNIPS and slice-mean
estimates of the mean rating. The label-aware fit's context model adds the item's out-of-fold
feedback rate (``--id-encodings response_id``): its tilt assumes the context part c(x) carries all
the selection that is not the rating's own, and on Coat the item itself (not only its 33 one-hot
features) drives who rates it (README). The context SNIPS row keeps the fit without it. The weighted-model part (MAR-test MSE of weighted matrix
factorisation with context vs label-aware weights) is ``benchmarks/paper_repro/coat.py``.

Writes ``benchmarks/slice/results.json`` and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.paper_repro.coat import FLOOR, causalrm, coat_dir, ingest, inputs, write_slice  # noqa: E402

ESTIMATORS = (("naive", "naive (mean of the self-selected ratings)"), ("context_snips", "SNIPS, context propensities"),
              ("label_aware_snips", "**SNIPS, label-aware (outcome model), 5% slice**"),
              ("label_aware_nb_snips", "SNIPS, label-aware (label model none), 5% slice"), ("slice_mean", "the slice's mean rating alone"),
              ("shipped_snips", "SNIPS, shipped propensities (authors', with survey data)"))


def shipped_snips(coat: Path) -> float:
    """SNIPS mean rating with the authors' propensities (a reference; no CLI step involved)."""
    train = np.loadtxt(coat / "train.ascii")
    propensity = np.loadtxt(coat / "propensities.ascii")
    rated = train > 0
    w = 1.0 / propensity[rated]
    return float((train[rated] * w).sum() / w.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="slice draws")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of the test ratings used as the slice")
    parser.add_argument("--no-label-model-none", action="store_true", help="skip the --label-model none runs")
    parser.add_argument("--data-dir", default=None, help="the Coat folder (default ../shared/data/coat)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/causalrm-slice-bench"))
    parser.add_argument("--id-encodings", default="response_id",
                        help="id columns encoded out of fold in the label-aware fit's context model ('' = none, the issue-17 H3 run)")
    args = parser.parse_args()
    started = time.perf_counter()
    coat = coat_dir(args.data_dir)
    log: list[str] = []
    args.work.mkdir(parents=True, exist_ok=True)
    files = inputs(coat, args.work, None)
    wh, _ = ingest(files, args.work, log)
    test = np.loadtxt(files["test"])
    causalrm("propensity", "fit", str(wh), "--clip", FLOOR, log=log)
    context_auc = json.loads((wh / "propensity" / "metrics.json").read_text())["vote"]["auc"]
    label_aware_auc = context_auc
    context_snips = None  # the context SNIPS does not depend on the slice draw: one run on draw 0's slice
    if args.id_encodings:
        write_slice(test, args.fraction, 0, args.work / "slice_0.csv")
        causalrm("propensity", "fit-label-aware", str(wh), "--slice", str(args.work / "slice_0.csv"), "--label-column", "rating",
                 "--clip", FLOOR, "--seed", "0", "--bootstrap", "20", log=log)
        context_snips = json.loads((wh / "propensity" / "label_aware.json").read_text())["estimates"]["context_snips"]["estimate"]
        causalrm("propensity", "fit", str(wh), "--clip", FLOOR, "--id-encodings", args.id_encodings, log=log)
        label_aware_auc = json.loads((wh / "propensity" / "metrics.json").read_text())["vote"]["auc"]
    shipped = shipped_snips(coat)
    runs = []
    for seed in range(args.seeds):
        slice_file = args.work / f"slice_{seed}.csv"
        eval_rows = write_slice(test, args.fraction, seed, slice_file)
        truth = float(test.reshape(-1)[eval_rows].mean())
        base = ["propensity", "fit-label-aware", str(wh), "--slice", str(slice_file), "--label-column", "rating", "--clip", FLOOR,
                "--seed", str(seed)]
        causalrm(*base, log=log)
        report = json.loads((wh / "propensity" / "label_aware.json").read_text())
        e = report["estimates"]
        row = {"seed": seed, "truth": truth, "n_slice": e["n_slice"], "n_eval": int(len(eval_rows)),
               "naive": e["naive"]["estimate"], "context_snips": e["context_snips"]["estimate"] if context_snips is None else context_snips,
               "label_aware_context_snips": e["context_snips"]["estimate"],
               "label_aware_snips": e["label_aware_snips"]["estimate"], "label_aware_ci": e["label_aware_snips"]["ci"],
               "slice_mean": e["slice"]["estimate"], "shipped_snips": shipped,
               "relative_propensity": report["label_values"]["relative_propensity"][0]}
        if not args.no_label_model_none:
            causalrm(*base, "--label-model", "none", "--bootstrap", "20", log=log)
            none = json.loads((wh / "propensity" / "label_aware.json").read_text())
            row["label_aware_nb_snips"] = none["estimates"]["label_aware_snips"]["estimate"]
        for key, _ in ESTIMATORS:
            if key in row:
                row[f"error_{key}"] = abs(row[key] - truth)
        row["covered"] = row["label_aware_ci"][0] <= truth <= row["label_aware_ci"][1]
        runs.append(row)
        print(f"   draw {seed}: truth {truth:.3f}, context SNIPS {row['context_snips']:.3f}, label-aware {row['label_aware_snips']:.3f}",
              flush=True)
    summary = {key: {"mean_abs_error": float(np.mean([r[f"error_{key}"] for r in runs])),
                     "max_abs_error": float(np.max([r[f"error_{key}"] for r in runs]))}
               for key, _ in ESTIMATORS if f"error_{key}" in runs[0]}
    summary["label_aware_coverage"] = float(np.mean([r["covered"] for r in runs]))
    results = {"estimates": {"context_auc": context_auc, "label_aware_context_auc": label_aware_auc, "id_encodings": args.id_encodings,
                             "clip": float(FLOOR), "fraction": args.fraction, "runs": runs, "summary": summary},
               "commands": log, "seconds": round(time.perf_counter() - started, 1)}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| estimator | mean abs error | max abs error |\n| --- | ---: | ---: |")
    for key, name in ESTIMATORS:
        if key in summary:
            print(f"| {name} | {summary[key]['mean_abs_error']:.3f} | {summary[key]['max_abs_error']:.3f} |")
    print(f"label-aware 95% interval coverage: {summary['label_aware_coverage']:.0%}; context AUC {context_auc:.3f}, "
          f"label-aware fit's context AUC {label_aware_auc:.3f}")
    print(f"{results['seconds']} s")


if __name__ == "__main__":
    main()
