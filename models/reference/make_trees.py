#!/usr/bin/env python3
"""Train the reference gradient-boosted tree models and write their model and golden files.

Each model below is trained, deterministically, with XGBoost or LightGBM on a data set
that ships with scikit-learn (nothing is downloaded), and saved in the library's own
format:

    models/<name>/model.json              bundled XGBoost model   (Booster.save_model)
    models/<name>/model.txt               bundled LightGBM model  (Booster.save_model)
    tests/fixtures/trees/<name>.json|.txt test-only fixture (few trees, one objective or
                                          option each, for the loader's tests)
    tests/golden/<name>.json              the golden rows and the library's own outputs

Bundled models:
    breast-cancer-xgboost   binary:logistic, 150 trees, max_depth 6, trees ~6 deep (benchmark reference)
    iris-xgboost            multi:softprob, 3 classes, 30 rounds, max_depth 3
    diabetes-xgboost        reg:squarederror, 100 trees, max_depth 4
    breast-cancer-lightgbm  binary, 100 trees, num_leaves 31
    iris-lightgbm           multiclass (softmax), 3 classes, 30 rounds
    diabetes-lightgbm       regression (l2), 100 trees

Test fixtures (tests/fixtures/trees/), see MODELS below for their parameters:
    xgb-reg-logistic xgb-logitraw xgb-softmax xgb-poisson xgb-tweedie xgb-dart xgb-rf
    xgb-digits-multi xgb-multi-target xgb-categorical
    xgb17-binary xgb17-multi       trained with xgboost 1.7.6 (JSON format of 1.x)
    xgb21-binary xgb21-multi       trained with xgboost 2.1.4 (JSON format of 2.x)
    lgb-l1 lgb-huber lgb-rf lgb-zero-missing lgb-no-missing lgb-poisson
    lgb-digits-multi lgb-categorical
The categorical fixtures (xgb-categorical, lgb-categorical: diabetes with 'sex' and a
six-bin 'bmi' as category codes) exist for "unsupported" errors, but have goldens too.

Data: each data set is split 70/30 with a fixed random_state (as in make_linear.py).
Then, with a fixed seed, about 10% of the values of both the training rows and the
held-out rows are set to NaN, so the trees learn default directions and the golden rows
exercise them. The golden rows are all held-out rows plus three special rows: all NaN,
all zeros, and the first held-out row (before masking) with every odd-indexed feature NaN.

Edge rows follow them, derived from the saved model file and the "base row" (the first
held-out row before masking), in two groups:

  1. Split thresholds. The numerical splits' distinct (feature, threshold) pairs, in model
     order (tree by tree, node by node; first appearance), k = min(24, n) of the n pairs
     evenly spaced (indices i * (n - 1) // (k - 1), i < k). For each, three rows: the base
     row with that feature at exactly the threshold as the library stores it, at the next
     float above it and at the next float below it. XGBoost: the float32 split_condition
     (x < t goes left, compared in float32) and its float32 neighbours (np.nextafter on
     float32), written as the float64 of that float32. LightGBM: the float64 threshold
     (x <= t goes left) and its float64 neighbours. Categorical splits are left out.
  2. Special values: 0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, +-1.0000000180025095e-35
     (LightGBM's kZeroThreshold, 1e-35f, as a float64) and 5e-324; for XGBoost models also
     1e39 and -1e39 (finite in float64, +-inf in XGBoost's float32), except for
     xgb-categorical, whose DMatrix refuses them ("Input data contains `inf` or a value too
     large"; inplace_predict takes them). With S values (S = 9 or 11, odd) in this order:
     S rows where feature j of row r holds value number (r + j) mod S (every feature
     special), then 2S rows that are the base row with the same assignment only where
     r + j is even. Each of the two blocks puts every special value at every feature position.

So every golden file has 3 * min(24, distinct numerical splits) + 3 * S edge rows after the
data rows. LightGBM reads a finite value with |x| <= kZeroThreshold as 0.0 for every
missing type (its dense-row input drops such values), so tiny values route like zeros there,
and a Zero-type split sends them its default way; XGBoost reads values as float32 (5e-324
becomes 0, 1e-36 stays) and has no such rule.

Golden file format (tests/golden/<name>.json), as for the linear models, plus the path
of the model file relative to the repository root:

    {
      "model": "<name>",
      "model_file": "models/<name>/model.json" | "tests/fixtures/trees/<name>.txt" | ...,
      "reference": {"library": "xgboost" | "lightgbm", "version": "...", "threads": 1,
                    "derived": {...},  // only where an output is not the library's own
                    "notes": {...}     // only where an output needs explaining
                   },
      "inputs": [[f64 or null x F] x N],   // null = missing (NaN)
      "outputs": {
         // classifiers (binary and multiclass):
         "probabilities": [[f64 x C] x N],   // binary: [1 - p, p], 1 - p in float64
         "label": [int x N],                 // binary: p > 0.5; multiclass: first argmax
                                             // (multi:softmax: the library's predict)
         "margin": [f64 x N] (binary) | [[f64 x C] x N] (multiclass),
         // regressors:
         "predictions": [f64 x N] | [[f64 x T] x N] (multi-target),
         "margin": [f64 x N] | [[f64 x T] x N]
      }
    }

All outputs come from the library (XGBoost: Booster.inplace_predict on float64 rows with
missing=NaN, or Booster.predict on a DMatrix for the categorical model; LightGBM:
Booster.predict, raw_score=True for the margin), with one thread, except where "derived"
says otherwise: binary:logitraw has no probability output, so its probabilities are
[1 - sigmoid(margin), sigmoid(margin)] and its label margin > 0; multi:softmax predicts
only the class, so its probabilities are softmax(margin); both computed in float64.
For lgb-rf (average_output), "notes" records that LightGBM's raw_score is the plain sum
over the trees, while its predict() averages that sum before the sigmoid.

After writing each model the script loads the saved model file again, reads the golden
inputs back (null -> NaN; they must be bitwise equal to the rows predicted, -0.0 included),
predicts them and checks that every output is bitwise equal to the golden file, then
prints a one-line summary: trees, max depth, XGBoost's base_score or LightGBM's
objective line, the distinct decision_type values and the golden row counts per group.

Run from the repository root (see README.md for the venvs):

    target/ref-venv/bin/python models/reference/make_trees.py        # xgboost 3.x + lightgbm
    target/ref-venv-xgb17/bin/python models/reference/make_trees.py  # only xgb17-* models
    target/ref-venv-xgb21/bin/python models/reference/make_trees.py  # only xgb21-* models

With xgboost 1.7 or 2.1 installed the script writes only the models tagged with that
version; LightGBM models are skipped when lightgbm is not installed. Paths are resolved
relative to this file, not the working directory.
"""

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import xgboost
from scipy.special import expit, softmax
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.model_selection import train_test_split

try:
    import lightgbm
except ImportError:
    lightgbm = None

REPO_ROOT = Path(__file__).resolve().parents[2]
RANDOM_STATE = 0
TEST_SIZE = 0.3
MISSING_SEED = 20240601
MISSING_RATE = 0.1
THREADS = 1
_MAJOR_MINOR = xgboost.__version__.split(".")[:2]
XGBOOST_SERIES = "3" if int(_MAJOR_MINOR[0]) >= 3 else ".".join(_MAJOR_MINOR)  # tags in MODELS


# --- data -------------------------------------------------------------------------------

def binary_digits(y):
    """digits >= 5 vs the rest: a binary task on pixel data, where zeros are common."""
    return (y >= 5).astype(np.int64)


def unit_interval(y):
    return (y - y.min()) / (y.max() - y.min())


def counts(y):
    return np.round(y / 10)


def two_targets(y):
    """Disease progression and its logarithm: two targets with different means."""
    return np.column_stack([y, np.log(y)])


def categorical_diabetes(X):
    """Turn 'sex' into category codes {0, 1} and 'bmi' into six quantile-bin codes 0..5."""
    X = X.copy()
    X[:, 1] = (X[:, 1] > 0).astype(np.float64)
    edges = np.quantile(X[:, 2], np.linspace(0, 1, 7)[1:-1])
    X[:, 2] = np.digitize(X[:, 2], edges).astype(np.float64)
    return X


CATEGORICAL_FEATURES = [1, 2]  # of categorical_diabetes

# name -> (loader, target transform, feature transform)
DATASETS = {
    "breast_cancer": (load_breast_cancer, None, None),
    "iris": (load_iris, None, None),
    "wine": (load_wine, None, None),
    "digits": (load_digits, None, None),
    "digits>=5": (load_digits, binary_digits, None),
    "diabetes": (load_diabetes, None, None),
    "diabetes[0,1]": (load_diabetes, unit_interval, None),
    "diabetes/10": (load_diabetes, counts, None),
    "diabetes,log": (load_diabetes, two_targets, None),
    "diabetes-categorical": (load_diabetes, None, categorical_diabetes),
}


@dataclass
class Data:
    X_train: np.ndarray
    y_train: np.ndarray
    X_golden: np.ndarray   # the held-out rows (masked) and the three special rows
    base_row: np.ndarray   # the first held-out row before masking: the base of the edge rows


def with_missing(X, rng):
    X = X.copy()
    X[rng.random(X.shape) < MISSING_RATE] = np.nan
    return X


def special_rows(row):
    """All NaN, all zeros, and `row` with every odd-indexed feature NaN."""
    every_other = row.copy()
    every_other[1::2] = np.nan
    return np.vstack([np.full_like(row, np.nan), np.zeros_like(row), every_other])


@cache
def dataset(name):
    loader, target, features = DATASETS[name]
    bunch = loader()
    X = bunch.data.astype(np.float64) if features is None else features(bunch.data.astype(np.float64))
    y = bunch.target if target is None else target(bunch.target)
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=TEST_SIZE, random_state=RANDOM_STATE)
    rng = np.random.default_rng(MISSING_SEED)
    X_train = with_missing(X_train, rng)
    X_golden = np.vstack([with_missing(X_test, rng), special_rows(X_test[0])])
    return Data(X_train, y_train, X_golden, X_test[0].copy())


# --- models -----------------------------------------------------------------------------

@dataclass
class Model:
    name: str
    library: str          # "xgboost" | "lightgbm"
    task: str             # binary | multiclass | regression | multi-target | logitraw | softmax
    data: str             # key of DATASETS
    params: dict
    rounds: int
    bundled: bool = False
    series: str = "3"     # XGBoost version series that must train it: "3", "2.1" or "1.7"

    @property
    def categorical(self):
        return self.data == "diabetes-categorical"

    @property
    def derived(self):
        """Outputs that are not the library's own, and how they were computed."""
        return {"logitraw": DERIVED_SIGMOID, "softmax": DERIVED_SOFTMAX}.get(self.task, {})

    @property
    def notes(self):
        return NOTES.get(self.name, {})

    @property
    def path(self):
        ext = "json" if self.library == "xgboost" else "txt"
        if self.bundled:
            return REPO_ROOT / "models" / self.name / f"model.{ext}"
        return REPO_ROOT / "tests" / "fixtures" / "trees" / f"{self.name}.{ext}"


def xgb(name, task, data, objective, rounds, bundled=False, series="3", **params):
    return Model(name, "xgboost", task, data, {"objective": objective, **params}, rounds, bundled, series)


def lgb(name, task, data, objective, rounds, bundled=False, **params):
    return Model(name, "lightgbm", task, data, {"objective": objective, **params}, rounds, bundled)


DERIVED_SIGMOID = {"probabilities": "[1 - sigmoid(margin), sigmoid(margin)] in float64",
                   "label": "margin > 0"}
DERIVED_SOFTMAX = {"probabilities": "softmax(margin) in float64"}
NOTES = {
    "lgb-rf": {"margin": "raw_score=True does not apply average_output: the sum over all trees; "
                         "probabilities are sigmoid(sum / number of iterations)"},
}

MODELS = [
    # Bundled.
    # Small steps and no child-weight floor let the trees really use six levels (about 6 deep
    # and 38 nodes on average; with defaults they stop near depth 2): the benchmark's model.
    xgb("breast-cancer-xgboost", "binary", "breast_cancer", "binary:logistic", 150, bundled=True,
        max_depth=6, eta=0.05, min_child_weight=0, reg_lambda=0.1),
    xgb("iris-xgboost", "multiclass", "iris", "multi:softprob", 30, bundled=True, num_class=3, max_depth=3),
    xgb("diabetes-xgboost", "regression", "diabetes", "reg:squarederror", 100, bundled=True,
        max_depth=4, eta=0.1),
    lgb("breast-cancer-lightgbm", "binary", "breast_cancer", "binary", 100, bundled=True, num_leaves=31),
    lgb("iris-lightgbm", "multiclass", "iris", "multiclass", 30, bundled=True, num_class=3),
    lgb("diabetes-lightgbm", "regression", "diabetes", "regression", 100, bundled=True),
    # XGBoost fixtures: one objective or option each.
    xgb("xgb-reg-logistic", "regression", "diabetes[0,1]", "reg:logistic", 20, max_depth=3),
    xgb("xgb-logitraw", "logitraw", "breast_cancer", "binary:logitraw", 20, max_depth=3),
    xgb("xgb-softmax", "softmax", "wine", "multi:softmax", 10, num_class=3, max_depth=2),
    xgb("xgb-poisson", "regression", "diabetes/10", "count:poisson", 20, max_depth=3),
    xgb("xgb-tweedie", "regression", "diabetes", "reg:tweedie", 20, max_depth=3, tweedie_variance_power=1.5),
    xgb("xgb-dart", "binary", "breast_cancer", "binary:logistic", 20, max_depth=3,
        booster="dart", rate_drop=0.2, skip_drop=0.0),
    xgb("xgb-rf", "regression", "diabetes", "reg:squarederror", 3, max_depth=4, eta=1.0,
        num_parallel_tree=4, subsample=0.8, colsample_bynode=0.8),
    xgb("xgb-digits-multi", "multiclass", "digits", "multi:softprob", 3, num_class=10, max_depth=3),
    xgb("xgb-multi-target", "multi-target", "diabetes,log", "reg:squarederror", 10, max_depth=3,
        multi_strategy="one_output_per_tree"),
    xgb("xgb-categorical", "regression", "diabetes-categorical", "reg:squarederror", 20, max_depth=3),
    # XGBoost version fixtures: written only when that version is installed.
    xgb("xgb17-binary", "binary", "breast_cancer", "binary:logistic", 10, series="1.7", max_depth=3),
    xgb("xgb17-multi", "multiclass", "iris", "multi:softprob", 10, series="1.7", num_class=3, max_depth=2),
    xgb("xgb21-binary", "binary", "breast_cancer", "binary:logistic", 10, series="2.1", max_depth=3),
    xgb("xgb21-multi", "multiclass", "iris", "multi:softprob", 10, series="2.1", num_class=3, max_depth=2),
    # LightGBM fixtures.
    lgb("lgb-l1", "regression", "diabetes", "regression_l1", 20, num_leaves=8),
    lgb("lgb-huber", "regression", "diabetes", "huber", 20, num_leaves=8, alpha=20.0),
    lgb("lgb-rf", "binary", "breast_cancer", "binary", 20, num_leaves=8,
        boosting="rf", bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8),
    lgb("lgb-zero-missing", "binary", "digits>=5", "binary", 20, num_leaves=8, zero_as_missing=True),
    lgb("lgb-no-missing", "regression", "diabetes", "regression", 20, num_leaves=8, use_missing=False),
    lgb("lgb-poisson", "regression", "diabetes/10", "poisson", 20, num_leaves=8),
    lgb("lgb-digits-multi", "multiclass", "digits", "multiclass", 3, num_class=10, num_leaves=8),
    lgb("lgb-categorical", "regression", "diabetes-categorical", "regression", 20, num_leaves=8,
        min_data_per_group=10, cat_smooth=1.0),
]


def xgb_feature_types(model, n_features):
    if not model.categorical:
        return None
    return ["c" if f in CATEGORICAL_FEATURES else "q" for f in range(n_features)]


def train(model):
    data = dataset(model.data)
    if model.library == "xgboost":
        params = {"tree_method": "hist", "seed": 0, "nthread": THREADS, **model.params}
        train_set = xgboost.DMatrix(
            data.X_train, label=data.y_train, missing=np.nan, nthread=THREADS,
            feature_types=xgb_feature_types(model, data.X_train.shape[1]),
            enable_categorical=model.categorical,
        )
        return xgboost.train(params, train_set, num_boost_round=model.rounds)
    params = {"seed": 0, "deterministic": True, "num_threads": THREADS, "force_col_wise": True,
              "verbose": -1, **model.params}
    train_set = lightgbm.Dataset(
        data.X_train, label=data.y_train,
        categorical_feature=CATEGORICAL_FEATURES if model.categorical else "auto",
    )
    return lightgbm.train(params, train_set, num_boost_round=model.rounds)


def load(model):
    if model.library == "xgboost":
        booster = xgboost.Booster(model_file=str(model.path))
        booster.set_param({"nthread": THREADS})
        return booster
    return lightgbm.Booster(model_file=str(model.path))


# --- edge rows --------------------------------------------------------------------------

MAX_SPLITS = 24  # split thresholds per model that get edge rows

# LightGBM's kZeroThreshold is 1e-35f: as a float64, 1.0000000180025095e-35.
LIGHTGBM_ZERO = float(np.float32(1e-35))
SPECIAL_VALUES = [0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, LIGHTGBM_ZERO, -LIGHTGBM_ZERO, 5e-324]
# Finite in float64, beyond float32: XGBoost's float32 view of them is +-inf. Only for
# XGBoost models predicted with inplace_predict: a DMatrix (the categorical model) refuses
# them ("Input data contains `inf` or a value too large, while `missing` is not set to `inf`").
BEYOND_FLOAT32 = [1e39, -1e39]


def xgb_numerical_splits(path):
    """(feature, threshold) of every numerical split, tree by tree, node by node.

    The threshold is the float32 split_condition (the JSON text is that float32's decimal)."""
    booster = json.loads(path.read_text())["learner"]["gradient_booster"]
    trees = (booster["gbtree"] if booster["name"] == "dart" else booster)["model"]["trees"]
    splits = []
    for tree in trees:
        split_types = tree.get("split_type") or [0] * len(tree["left_children"])
        for node, left in enumerate(tree["left_children"]):
            if left != -1 and split_types[node] == 0:
                written = tree["split_conditions"][node]
                threshold = np.float32(written)
                # The text is that float32's shortest decimal: nothing was lost or rounded.
                assert float(np.format_float_scientific(threshold, unique=True)) == written, written
                splits.append((tree["split_indices"][node], threshold))
    return splits


def lgb_numerical_splits(path):
    """(feature, threshold) of every numerical split, tree by tree, node by node.

    The threshold is LightGBM's float64 (the text format writes it with 17 digits)."""
    splits = []
    for tree in lgb_trees(path):
        if "split_feature" not in tree:
            continue
        features = [int(v) for v in tree["split_feature"].split()]
        thresholds = [float(v) for v in tree["threshold"].split()]
        decision_types = [int(v) for v in tree["decision_type"].split()]
        splits += [(f, np.float64(t)) for f, t, d in zip(features, thresholds, decision_types) if not d & 1]
    return splits


def chosen_splits(model):
    """Up to MAX_SPLITS of the model's distinct (feature, threshold) pairs, evenly spaced over
    them in model order (first appearance)."""
    numerical_splits = xgb_numerical_splits if model.library == "xgboost" else lgb_numerical_splits
    distinct = {}  # keyed by the threshold's bits: 0.0 and -0.0 are different thresholds
    for feature, threshold in numerical_splits(model.path):
        distinct.setdefault((int(feature), threshold.tobytes()), (int(feature), threshold))
    distinct = list(distinct.values())
    k = min(MAX_SPLITS, len(distinct))
    picks = [0] if k == 1 else [i * (len(distinct) - 1) // (k - 1) for i in range(k)]
    return [distinct[i] for i in picks]


def threshold_rows(model, base_row):
    """For each chosen split: the base row with that feature at the threshold, at the next
    float above and at the next float below it (float32 steps for XGBoost, float64 for
    LightGBM: the precision each library compares in)."""
    rows = []
    for feature, threshold in chosen_splits(model):
        for value in (threshold, np.nextafter(threshold, threshold.dtype.type(np.inf)),
                      np.nextafter(threshold, threshold.dtype.type(-np.inf))):
            row = base_row.copy()
            row[feature] = float(value)
            rows.append(row)
    return np.array(rows).reshape(-1, len(base_row))


def special_values(model):
    if model.library == "xgboost" and not model.categorical:
        return SPECIAL_VALUES + BEYOND_FLOAT32
    return SPECIAL_VALUES


def special_value_rows(model, base_row):
    """The special values cycled through the feature positions. With S values: S rows where
    row r has value number (r + j) mod S at feature j (every feature special), then 2S rows
    that are the base row with the same assignment only where r + j is even. S is odd (9 or
    11), so each block puts every value at every feature position."""
    values = special_values(model)
    count, n_features = len(values), len(base_row)
    assert count % 2 == 1, "an odd count puts every value at every position in the half block"
    full = [[values[(r + j) % count] for j in range(n_features)] for r in range(count)]
    half = [[values[(r + j) % count] if (r + j) % 2 == 0 else base_row[j] for j in range(n_features)]
            for r in range(2 * count)]
    return np.array(full + half, dtype=np.float64)


def edge_rows(model):
    """Rows derived from the saved model: split thresholds and special values."""
    base_row = dataset(model.data).base_row
    return np.vstack([threshold_rows(model, base_row), special_value_rows(model, base_row)])


# --- outputs ----------------------------------------------------------------------------

def raw_outputs(model, booster, X):
    """(value, margin) as float64 arrays, straight from the library."""
    if model.library == "lightgbm":
        value = booster.predict(X, num_threads=THREADS)
        margin = booster.predict(X, raw_score=True, num_threads=THREADS)
    elif model.categorical:
        rows = xgboost.DMatrix(X, missing=np.nan, nthread=THREADS, enable_categorical=True,
                               feature_types=xgb_feature_types(model, X.shape[1]))
        value = booster.predict(rows)
        margin = booster.predict(rows, output_margin=True)
    else:
        value = booster.inplace_predict(X, predict_type="value", missing=np.nan)
        margin = booster.inplace_predict(X, predict_type="margin", missing=np.nan)
    return np.asarray(value, dtype=np.float64), np.asarray(margin, dtype=np.float64)


def outputs(model, booster, X):
    """Golden outputs for the rows X (NaN = missing)."""
    value, margin = raw_outputs(model, booster, X)
    if model.task in ("regression", "multi-target"):
        return {"predictions": value, "margin": margin}
    if model.task == "binary":
        return {"probabilities": np.column_stack([1 - value, value]),
                "label": (value > 0.5).astype(np.int64), "margin": margin}
    if model.task == "multiclass":
        return {"probabilities": value, "label": value.argmax(axis=1), "margin": margin}
    if model.task == "logitraw":
        assert np.array_equal(value, margin), f"{model.name}: logitraw predict is not the margin"
        p = expit(margin)
        return {"probabilities": np.column_stack([1 - p, p]),
                "label": (margin > 0).astype(np.int64), "margin": margin}
    if model.task == "softmax":
        label = value.astype(np.int64)
        assert np.array_equal(label, margin.argmax(axis=1)), f"{model.name}: predict is not argmax(margin)"
        return {"probabilities": softmax(margin, axis=1), "label": label, "margin": margin}
    raise ValueError(f"unknown task {model.task!r}")


# --- model file summaries ---------------------------------------------------------------

def xgb_depth(left, right, node=0):
    """Depth below an XGBoost node; leaves have left child -1."""
    if left[node] < 0:
        return 0
    return 1 + max(xgb_depth(left, right, left[node]), xgb_depth(left, right, right[node]))


def lgb_depth(left, right, child=0):
    """Depth below a LightGBM child reference; a negative one (~leaf index) is a leaf."""
    if child < 0:
        return 0
    return 1 + max(lgb_depth(left, right, left[child]), lgb_depth(left, right, right[child]))


def xgb_summary(path):
    learner = json.loads(path.read_text())["learner"]
    booster = learner["gradient_booster"]
    trees = (booster["gbtree"] if booster["name"] == "dart" else booster)["model"]["trees"]
    max_depth = max(xgb_depth(t["left_children"], t["right_children"]) for t in trees)
    if any(1 in t.get("split_type", []) for t in trees):
        split_types = "categorical splits"
    else:
        split_types = "numerical splits only"
    return (f"{len(trees)} trees, max depth {max_depth}, {split_types}, "
            f"base_score {learner['learner_model_param']['base_score']}")


MISSING_TYPES = {0: "None", 1: "Zero", 2: "NaN"}


def decision_type_name(value):
    parts = ["categorical" if value & 1 else "numerical"]
    if value & 2:
        parts.append("default_left")
    parts.append(MISSING_TYPES[(value >> 2) & 3])
    return f"{value}={'|'.join(parts)}"


def lgb_trees(path):
    """Per tree: dict of the key=value lines of the LightGBM text format."""
    trees, current = [], None
    for line in path.read_text().splitlines():
        if line.startswith("Tree="):
            current = {}
            trees.append(current)
        elif line == "end of trees":
            break
        elif current is not None and "=" in line:
            key, value = line.split("=", 1)
            current[key] = value
    return trees


def lgb_summary(path):
    header = path.read_text().split("\n\n", 1)[0].splitlines()
    objective = next(line for line in header if line.startswith("objective="))[len("objective="):]
    trees = lgb_trees(path)
    ints = lambda text: [int(v) for v in text.split()]  # noqa: E731
    max_depth = max(
        lgb_depth(ints(t["left_child"]), ints(t["right_child"])) if "left_child" in t else 0 for t in trees
    )
    decision_types = sorted({v for t in trees for v in ints(t.get("decision_type", ""))})
    average = ", average_output" if "average_output" in header else ""
    return (f"{len(trees)} trees, max depth {max_depth}, objective '{objective}'{average}, "
            f"decision_type {{{', '.join(map(decision_type_name, decision_types))}}}"), decision_types


def summarize(model):
    """One-line description of the saved model file; asserts the option it is meant to cover."""
    if model.library == "xgboost":
        summary = xgb_summary(model.path)
        assert model.categorical == ("categorical splits" in summary), f"{model.name}: {summary}"
        return summary
    summary, decision_types = lgb_summary(model.path)
    missing_types = {(v >> 2) & 3 for v in decision_types}
    expected = {"lgb-zero-missing": {1}, "lgb-no-missing": {0}}.get(model.name, {2})
    assert missing_types == expected, f"{model.name}: missing types {missing_types}"
    assert model.categorical == any(v & 1 for v in decision_types), f"{model.name}: {summary}"
    assert ("average_output" in summary) == (model.params.get("boosting") == "rf"), summary
    return summary


# --- files ------------------------------------------------------------------------------

def to_json(value, level=0):
    """JSON text, indented, with each list of scalars (one row) on a single line."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {to_json(item, level + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(item, (list, dict)) for item in value):
        return "[\n" + ",\n".join(inner + to_json(item, level + 1) for item in value) + f"\n{pad}]"
    return json.dumps(value, allow_nan=False)


def rows_to_json(X):
    return [[None if math.isnan(v) else v for v in row] for row in X.tolist()]


def rows_from_json(rows):
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def bitwise(X):
    return np.ascontiguousarray(X, dtype=np.float64).view(np.uint64)


def self_check(model, golden_path, X_written):
    """Predict the golden rows again from the saved model file; outputs must be bitwise equal.

    The inputs read back must be bitwise equal to the rows predicted (-0.0, 5e-324, ...)."""
    golden = json.loads(golden_path.read_text())
    X = rows_from_json(golden["inputs"])
    assert np.array_equal(bitwise(X), bitwise(X_written)), f"{model.name}: inputs do not read back bitwise"
    again = outputs(model, load(model), X)
    assert again.keys() == golden["outputs"].keys(), f"{model.name}: output names differ"
    for key, expected in golden["outputs"].items():
        ours = again[key]
        if key == "label":
            assert ours.tolist() == expected, f"{model.name}: labels differ"
        else:
            expected = np.array(expected, dtype=np.float64)
            assert ours.shape == expected.shape, f"{model.name}.{key}: shape {ours.shape} != {expected.shape}"
            assert np.array_equal(bitwise(ours), bitwise(expected)), (
                f"{model.name}.{key}: not bitwise equal to the golden file"
            )
    return len(X)


def build(model):
    booster = train(model)
    model.path.parent.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(model.path))
    library = xgboost if model.library == "xgboost" else lightgbm
    reference = {"library": model.library, "version": library.__version__, "threads": THREADS}
    if model.derived:
        reference["derived"] = model.derived
    if model.notes:
        reference["notes"] = model.notes
    X_rows = dataset(model.data).X_golden
    X_edge = edge_rows(model)
    X = np.vstack([X_rows, X_edge])
    golden = {
        "model": model.name,
        "model_file": model.path.relative_to(REPO_ROOT).as_posix(),
        "reference": reference,
        "inputs": rows_to_json(X),
        "outputs": {key: value.tolist() for key, value in outputs(model, booster, X).items()},
    }
    golden_path = REPO_ROOT / "tests" / "golden" / f"{model.name}.json"
    golden_path.write_text(to_json(golden) + "\n")
    rows = self_check(model, golden_path, X)
    size = model.path.stat().st_size
    print(f"{model.name}: {model.library} {library.__version__} {model.params['objective']}, "
          f"{summarize(model)}; {size / 1024:.1f} KiB; {rows} golden rows bitwise equal "
          f"({len(X_rows)} data, {len(X_edge)} edge: {len(X_edge) - 3 * len(special_values(model))} "
          f"threshold, {3 * len(special_values(model))} special-value)")


def main():
    selected = [m for m in MODELS if m.library == "xgboost" and m.series == XGBOOST_SERIES]
    if not selected:
        raise SystemExit(f"no models are tagged for xgboost {xgboost.__version__} (3.x, 2.1 or 1.7)")
    if XGBOOST_SERIES == "3":
        if lightgbm is None:
            print("lightgbm is not installed: skipping the LightGBM models")
        else:
            selected += [m for m in MODELS if m.library == "lightgbm"]
    for model in selected:
        build(model)


if __name__ == "__main__":
    main()
