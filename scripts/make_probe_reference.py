#!/usr/bin/env python3
"""Writes tests/fixtures/probe/reference.json: a small non-separable data set and scikit-learn's
StandardScaler + LogisticRegression(C=1.0) fit on it, with the scaling folded into raw-space
weights and intercept (what dsg's probe stores). tests/probe_gate.rs checks dsg's fit against it.

    python3 -m venv /work/pyref && /work/pyref/bin/pip install numpy scikit-learn
    /work/pyref/bin/python scripts/make_probe_reference.py
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

rng = np.random.default_rng(13)
n, d = 60, 8
# Features on different scales and offsets (so the standardisation matters), one constant feature
# (scale 1, as StandardScaler leaves it), and labels from a noisy linear rule (not separable).
x = rng.normal(size=(n, d)) * np.array([1.0, 5.0, 0.2, 3.0, 1.0, 0.5, 2.0, 1.0]) + np.arange(d)
x[:, 7] = 4.0
x = x.astype(np.float32)
logit = 0.8 * x[:, 0] - 0.3 * x[:, 1] + 2.0 * x[:, 2] + rng.normal(scale=1.5, size=n)
y = (logit > np.median(logit)).astype(int)

scaler = StandardScaler().fit(x.astype(np.float64))
# newton-cholesky stops on the gradient; lbfgs (the default solver) also stops on a relative
# decrease of the objective, a few 1e-5 short of the optimum here, so it is only compared.
model = LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-8, max_iter=1000)
model.fit(scaler.transform(x), y)
lbfgs = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(scaler.transform(x), y)
print("lbfgs - newton-cholesky, max |coef|:", np.abs(lbfgs.coef_ - model.coef_).max())
w_std = model.coef_[0]
w = w_std / scaler.scale_
b = model.intercept_[0] - np.dot(w, scaler.mean_)

out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/probe/reference.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(
    json.dumps(
        {
            "generator": f"scripts/make_probe_reference.py, scikit-learn {sklearn.__version__}",
            "C": 1.0,
            "x": x.astype(float).tolist(),
            "y": y.tolist(),
            "weights": w.tolist(),
            "bias": float(b),
        },
        indent=1,
    )
    + "\n"
)
print(f"wrote {out}: w = {w}, b = {b}")
