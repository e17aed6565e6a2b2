#!/usr/bin/env python3
"""Train the reference linear/logistic models and write their model and golden files.

For each model below this script trains a scikit-learn estimator, deterministically,
on a data set that ships with scikit-learn (nothing is downloaded), then writes

    models/<name>/model.json     the model in the "inferd linear model" format
    tests/golden/<name>.json     the held-out test rows and the estimator's own outputs

Models:
    diabetes-linear         LinearRegression on load_diabetes()
    breast-cancer-logistic  Pipeline(StandardScaler, LogisticRegression) on
                            load_breast_cancer(); the scaler is folded into the
                            exported coefficients, so model.json works on raw features
    iris-logistic           multinomial (softmax) LogisticRegression on load_iris()

Each data set is split 70/30 with a fixed random_state; the model is trained on the
70% and every row of the 30% becomes a golden row. Finally the script re-loads both
files it wrote, evaluates model.json with the formula below in numpy float64, checks it
against the golden outputs (max abs difference < 1e-9, identical labels) and prints a
one-line summary per model.

Run from the repository root:

    pip install -r models/reference/requirements.txt
    python3 models/reference/make_linear.py

Paths are resolved relative to this file, not the working directory.

Model file format ("inferd linear model", JSON):

    {
      "format": "inferd.linear",        // fixed string
      "version": 1,                      // fixed
      "task": "regression" | "classification",
      "link": "identity" | "logistic" | "softmax",   // identity for regression; logistic for binary (one coefficient row, p(class[1]) = sigmoid(margin)); softmax for multinomial (one row per class)
      "n_features": <int F>,
      "feature_names": [str, ... F],    // optional; include the data set's feature names
      "coefficients": [[f64 x F], ... K rows],   // K=1 for regression/binary, K = number of classes for softmax
      "intercepts": [f64 x K],
      "classes": [ints or strings],     // classification only: length 2 for logistic, K for softmax; use the estimator's classes_ (ints here)
      "source": {"library": "scikit-learn", "version": "<sklearn version>", "estimator": "<class name, e.g. Pipeline(StandardScaler, LogisticRegression)>", "dataset": "<sklearn loader name>"}
    }

Formula: margin[n][k] = intercepts[k] + sum_f coefficients[k][f] * x[n][f].
    identity: prediction = margin (shape [N] when K=1).
    logistic: p1 = 1/(1+exp(-margin)), probabilities = [1-p1, p1];
              label = classes[1] if margin > 0 (i.e. p1 > 0.5) else classes[0] -- the
              same tie rule as scikit-learn, which predicts classes[1] when
              decision_function > 0; margin output shape [N].
    softmax:  probabilities = softmax(margin row); label = classes[argmax] (first max
              on ties); margin output [N][K].

Golden file format (tests/golden/<name>.json):

    {
      "model": "<name>",
      "reference": {"library": "scikit-learn", "version": "..."},
      "inputs": [[f64 x F], ... N rows],
      "outputs": {
         // regression:
         "predictions": [f64 x N],                 // estimator.predict
         // classification:
         "probabilities": [[f64 x C] x N],         // predict_proba
         "label": [class x N],                     // predict
         "margin": [f64 x N] (binary) or [[f64 x K] x N] (multinomial)   // decision_function
      }
    }
"""

import json
import warnings
from pathlib import Path

import numpy as np
import sklearn
from scipy.special import expit, softmax
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO_ROOT = Path(__file__).resolve().parents[2]
RANDOM_STATE = 0
TEST_SIZE = 0.3
TOLERANCE = 1e-9


def split(dataset):
    """Deterministic train/test split of a scikit-learn Bunch."""
    return train_test_split(
        dataset.data, dataset.target, test_size=TEST_SIZE, random_state=RANDOM_STATE
    )


def model_document(task, link, coefficients, intercepts, feature_names, estimator, loader, classes=None):
    """Build a model.json document; coefficients is [K][F], intercepts is [K]."""
    coefficients = np.asarray(coefficients, dtype=np.float64)
    document = {
        "format": "inferd.linear",
        "version": 1,
        "task": task,
        "link": link,
        "n_features": coefficients.shape[1],
        "feature_names": [str(name) for name in feature_names],
        "coefficients": coefficients.tolist(),
        "intercepts": np.asarray(intercepts, dtype=np.float64).tolist(),
    }
    if classes is not None:
        document["classes"] = np.asarray(classes).tolist()
    document["source"] = {
        "library": "scikit-learn",
        "version": sklearn.__version__,
        "estimator": estimator,
        "dataset": loader.__name__,
    }
    return document


def classifier_outputs(estimator, X):
    """The estimator's own outputs on X, in golden-file form."""
    return {
        "probabilities": estimator.predict_proba(X).tolist(),
        "label": estimator.predict(X).tolist(),
        "margin": estimator.decision_function(X).tolist(),
    }


def diabetes_linear():
    dataset = load_diabetes()
    X_train, X_test, y_train, _ = split(dataset)
    estimator = LinearRegression().fit(X_train, y_train)
    model = model_document(
        "regression", "identity", [estimator.coef_], [estimator.intercept_],
        dataset.feature_names, "LinearRegression", load_diabetes,
    )
    return model, X_test, {"predictions": estimator.predict(X_test).tolist()}


def breast_cancer_logistic():
    dataset = load_breast_cancer()
    X_train, X_test, y_train, _ = split(dataset)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipeline.fit(X_train, y_train)
    scaler, logistic = pipeline[0], pipeline[-1]
    # Fold the scaler into the linear model: coef . (x - mean) / scale + b
    #   = (coef / scale) . x + (b - sum(coef * mean / scale)).
    coefficients = logistic.coef_ / scaler.scale_
    intercepts = logistic.intercept_ - (coefficients * scaler.mean_).sum(axis=1)
    model = model_document(
        "classification", "logistic", coefficients, intercepts,
        dataset.feature_names, "Pipeline(StandardScaler, LogisticRegression)",
        load_breast_cancer, classes=logistic.classes_,
    )
    return model, X_test, classifier_outputs(pipeline, X_test)


def iris_logistic():
    dataset = load_iris()
    X_train, X_test, y_train, _ = split(dataset)
    # With lbfgs and more than two classes, scikit-learn fits one multinomial
    # (softmax) model; the assertion below makes sure it is not one-vs-rest.
    estimator = LogisticRegression(solver="lbfgs", max_iter=1000).fit(X_train, y_train)
    outputs = classifier_outputs(estimator, X_test)
    softmax_of_margin = softmax(np.array(outputs["margin"]), axis=1)
    assert np.abs(softmax_of_margin - np.array(outputs["probabilities"])).max() < 1e-12, (
        "iris-logistic: predict_proba is not softmax(decision_function)"
    )
    model = model_document(
        "classification", "softmax", estimator.coef_, estimator.intercept_,
        dataset.feature_names, "LogisticRegression", load_iris,
        classes=estimator.classes_,
    )
    return model, X_test, outputs


MODELS = {
    "diabetes-linear": diabetes_linear,
    "breast-cancer-logistic": breast_cancer_logistic,
    "iris-logistic": iris_logistic,
}


def evaluate(model, X):
    """Evaluate a model.json document on X with the documented formula."""
    coefficients = np.array(model["coefficients"], dtype=np.float64)
    intercepts = np.array(model["intercepts"], dtype=np.float64)
    margin = X @ coefficients.T + intercepts
    link = model["link"]
    if link == "identity":
        return {"predictions": margin[:, 0]}
    classes = model["classes"]
    if link == "logistic":
        margin = margin[:, 0]
        p1 = expit(margin)
        labels = [classes[1] if m > 0 else classes[0] for m in margin]
        return {"probabilities": np.column_stack([1 - p1, p1]), "label": labels, "margin": margin}
    if link == "softmax":
        labels = [classes[k] for k in margin.argmax(axis=1)]
        return {"probabilities": softmax(margin, axis=1), "label": labels, "margin": margin}
    raise ValueError(f"unknown link {link!r}")


def self_check(model_path, golden_path):
    """Re-load both files; return the max abs difference between model.json's
    outputs and the golden (scikit-learn) outputs. Labels must match exactly."""
    model = json.loads(model_path.read_text())
    golden = json.loads(golden_path.read_text())
    inputs = np.array(golden["inputs"], dtype=np.float64)
    ours = evaluate(model, inputs)
    max_diff = 0.0
    for key, expected in golden["outputs"].items():
        if key == "label":
            assert ours[key] == expected, f"{golden['model']}: labels differ"
        else:
            max_diff = max(max_diff, float(np.abs(ours[key] - np.array(expected)).max()))
    return len(inputs), max_diff


def write_json(path, document):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        json.dump(document, f, indent=2, allow_nan=False)
        f.write("\n")


def main():
    warnings.simplefilter("error", ConvergenceWarning)
    for name, build in MODELS.items():
        model, X_test, outputs = build()
        golden = {
            "model": name,
            "reference": {"library": "scikit-learn", "version": sklearn.__version__},
            "inputs": X_test.tolist(),
            "outputs": outputs,
        }
        model_path = REPO_ROOT / "models" / name / "model.json"
        golden_path = REPO_ROOT / "tests" / "golden" / f"{name}.json"
        write_json(model_path, model)
        write_json(golden_path, golden)
        rows, max_diff = self_check(model_path, golden_path)
        assert max_diff < TOLERANCE, f"{name}: max abs diff {max_diff:.3e} >= {TOLERANCE}"
        print(f"{name}: {rows} rows, max abs diff {max_diff:.3e}")


if __name__ == "__main__":
    main()
