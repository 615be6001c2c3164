"""Training budgets and --init on digits: each family fitted in this process (fit_local, the same
loop as `aepipe train`) on the digits train split, then its reconstruction MSE on the test split
beside PCA with the same code size; also the validation loss at epoch 0 (PCA's, under --init pca).
The vae's validation figures under --init pca are its negative ELBO and PPCA's negative
log-likelihood, nats per value ("vae (-ELBO; PPCA)"), its floor being PPCA.

    .venv/bin/python bench/budgets.py                                   # defaults
    .venv/bin/python bench/budgets.py --train '{"epochs": 30, "patience": 10, "schedule": "constant"}'
    .venv/bin/python bench/budgets.py --init none --families dense,conv
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from results import record  # bench/results.py: this script's section of bench/RESULTS.md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="dense,sparse,vae,conv")
    ap.add_argument("--code-dim", type=int, default=8)
    ap.add_argument("--init", default="pca", choices=("pca", "none"))
    ap.add_argument("--train", default="{}", help="TrainConfig fields as JSON [default: aepipe train's]")
    args = ap.parse_args()
    import torch
    from sklearn.decomposition import PCA

    from aepipe.analysis.metrics import digits_split, format_table
    from aepipe.models import ModelConfig
    from aepipe.normalize import in_validation
    from aepipe.training import TrainConfig, fit_local

    torch.set_num_threads(1)
    xtr, _, idtr, xte, _, _ = digits_split()
    val = in_validation(idtr, 0.1)
    tr, va = (a.reshape(-1, 8, 8).astype(np.float32) for a in (xtr[~val], xtr[val]))
    p = PCA(args.code_dim).fit(tr.reshape(len(tr), -1))
    pca_test = float(((p.inverse_transform(p.transform(xte)) - xte) ** 2).mean())
    rows = []
    for family in args.families.split(","):
        t0 = time.time()
        mcfg = ModelConfig(family=family, input_shape=(8, 8), code_dim=args.code_dim, init=args.init)
        model, st = fit_local(mcfg, TrainConfig(**json.loads(args.train)), tr, va)
        with torch.no_grad():
            te = torch.from_numpy(xte.reshape(-1, 8, 8).astype(np.float32))
            mse = float((model.decode(model.encode(te)) - te).pow(2).mean())
        name = family + (" (-ELBO; PPCA)" if model.figure == "neg_elbo" else "")
        rows.append([name, "-" if st.init_val is None else st.init_val, st.pca_val, st.best_recon,
                     f"{st.best_epoch + 1}/{len(st.history)}", mse, pca_test, f"{time.time() - t0:.0f}"])
        print(rows[-1], flush=True)
    table = format_table(["family", "epoch-0 val", "PCA val", "best val", "best/run epochs", "test MSE",
                          f"PCA {args.code_dim} test MSE", "s"], rows)
    print(table)
    record("budgets" + ("" if args.init == "pca" else f"_init_{args.init}"), table)


if __name__ == "__main__":
    main()
