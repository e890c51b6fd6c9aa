"""scikit-learn's reference for a live probe: ``Ridge`` on the concatenated pooled features, scored per mode.

Shared by the probe's own tests and the trainer integrations' (which must give the same values).
"""

from __future__ import annotations

import numpy as np


def ridge_probe(
    train_x, train_y, eval_x, eval_y, classes: bool, ridge: float = 1e-3, width: int | None = None
) -> dict[str, float]:
    """``{"train-r2", "eval-r2"}`` (and ``-accuracy`` for classes) of ``Ridge(alpha = lambda * N)``.

    ``lambda = ridge * trace(Sxx) / d`` as delve's probe; class targets become
    one-hot rows, ``width`` columns (default: the largest class seen plus one).
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    train_x, eval_x = np.asarray(train_x, np.float64), np.asarray(eval_x, np.float64)
    if classes:
        width = width or int(max(train_y.max(), eval_y.max())) + 1
        train_t, eval_t = np.eye(width)[train_y], np.eye(width)[eval_y]
    else:
        train_t = np.asarray(train_y, np.float64).reshape(len(train_y), -1)
        eval_t = np.asarray(eval_y, np.float64).reshape(len(eval_y), -1)
    n, d = train_x.shape
    penalty = ridge * np.trace(np.cov(train_x, rowvar=False, bias=True)) / d
    model = Ridge(alpha=penalty * n, fit_intercept=True, solver="cholesky").fit(train_x, train_t)
    out = {}
    for mode, x, t, y in (("train", train_x, train_t, train_y), ("eval", eval_x, eval_t, eval_y)):
        predicted = model.predict(x)
        out[f"{mode}-r2"] = r2_score(t, predicted, multioutput="variance_weighted")
        if classes:
            out[f"{mode}-accuracy"] = float(np.mean(predicted.argmax(1) == y))
    return out
