"""End-to-end tests of inferd's HTTP API (Open Inference Protocol v2) with
NVIDIA's official client, ``tritonclient.http``.

The tests talk to an inferd server that is already running; its address comes
from the environment as ``host:port`` without a scheme:

    INFERD_URL=127.0.0.1:8080 python -m unittest discover -s tests/python -v

Expected results are the golden files in ``tests/golden/<model>.json``, which
hold scikit-learn's own outputs for held-out rows (see
``models/reference/make_linear.py``).
"""

import json
import os
import unittest

import numpy as np
import tritonclient.http as httpclient

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden")

INPUT_NAME = "input"

# What inferd serves. "outputs" maps every output of a model to its shape in
# the model metadata; "default_outputs" are returned when a request names none.
MODELS = {
    "iris-logistic": {
        "platform": "inferd_linear",
        "features": 4,
        "outputs": {"probabilities": [-1, 3], "label": [-1], "margin": [-1, 3]},
        "default_outputs": ["probabilities", "label"],
    },
    "breast-cancer-logistic": {
        "platform": "inferd_linear",
        "features": 30,
        "outputs": {"probabilities": [-1, 2], "label": [-1], "margin": [-1]},
        "default_outputs": ["probabilities", "label"],
    },
    "diabetes-linear": {
        "platform": "inferd_linear",
        "features": 10,
        "outputs": {"predictions": [-1]},
        "default_outputs": ["predictions"],
    },
    "breast-cancer-xgboost": {
        "platform": "inferd_xgboost",
        "features": 30,
        "outputs": {"probabilities": [-1, 2], "label": [-1], "margin": [-1]},
        "default_outputs": ["probabilities", "label"],
    },
    "iris-xgboost": {
        "platform": "inferd_xgboost",
        "features": 4,
        "outputs": {"probabilities": [-1, 3], "label": [-1], "margin": [-1, 3]},
        "default_outputs": ["probabilities", "label"],
    },
    "diabetes-xgboost": {
        "platform": "inferd_xgboost",
        "features": 10,
        "outputs": {"predictions": [-1], "margin": [-1]},
        "default_outputs": ["predictions"],
    },
    "breast-cancer-lightgbm": {
        "platform": "inferd_lightgbm",
        "features": 30,
        "outputs": {"probabilities": [-1, 2], "label": [-1], "margin": [-1]},
        "default_outputs": ["probabilities", "label"],
    },
    "iris-lightgbm": {
        "platform": "inferd_lightgbm",
        "features": 4,
        "outputs": {"probabilities": [-1, 3], "label": [-1], "margin": [-1, 3]},
        "default_outputs": ["probabilities", "label"],
    },
    "diabetes-lightgbm": {
        "platform": "inferd_lightgbm",
        "features": 10,
        "outputs": {"predictions": [-1], "margin": [-1]},
        "default_outputs": ["predictions"],
    },
}
# Tree models' golden rows hold missing values: JSON null, NaN in numpy.
CLASSIFIERS = [name for name, spec in MODELS.items() if "label" in spec["outputs"]]

# Outputs compared exactly (integer class labels) rather than with a tolerance.
EXACT_OUTPUTS = {"label"}
LABEL_DATATYPE = "INT64"

# FP64 input: inferd evaluates the model in float64, like the reference, so the
# only differences are summation order and libm; an element passes if it is
# within 1e-5 absolutely or relatively of the golden value.
FP64_RTOL = 1e-5
FP64_ATOL = 1e-5

# FP32 input: every feature is rounded to float32 before it reaches the server
# (relative error up to 2**-24, about 6e-8), that error is carried through the
# dot product (whose terms reach a few hundred in magnitude for diabetes-linear,
# which alone can shift a prediction by ~1e-5), and the outputs themselves come
# back as float32 (about 7 significant digits). So the float64 golden values
# can only be matched to ~1e-4 relative; the 1e-5 absolute bound covers values
# near zero (tiny probabilities, margins close to 0) where a relative bound is
# meaningless. Labels must still match exactly: the linear models' golden rows
# keep every margin at least 0.09 from a decision boundary, and XGBoost rounds
# its inputs to float32 itself, so float32 inputs change nothing for it.
FP32_RTOL = 1e-4
FP32_ATOL = 1e-5

NUMPY_DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}

_golden_cache = {}


def server_url():
    url = os.environ.get("INFERD_URL")
    if not url:
        raise RuntimeError(
            "INFERD_URL is not set: start inferd and set INFERD_URL=host:port "
            "(no scheme), e.g. INFERD_URL=127.0.0.1:8080"
        )
    return url


def load_golden(model):
    """The golden file of a model as a dict; inputs and outputs as numpy arrays."""
    if model not in _golden_cache:
        with open(os.path.join(GOLDEN_DIR, model + ".json"), encoding="utf-8") as f:
            golden = json.load(f)
        golden["inputs"] = np.asarray(golden["inputs"], dtype=np.float64)
        golden["outputs"] = {
            name: np.asarray(values) for name, values in golden["outputs"].items()
        }
        _golden_cache[model] = golden
    return _golden_cache[model]


def make_input(rows, datatype, binary_data=True):
    """An InferInput named "input" holding ``rows`` (an [N, F] array) as ``datatype``."""
    # Golden rows hold values beyond float32's range (±1e39) on purpose: as
    # float32 they become ±inf, which XGBoost reads the same way.
    with np.errstate(over="ignore"):
        array = np.ascontiguousarray(rows, dtype=NUMPY_DTYPES[datatype])
    infer_input = httpclient.InferInput(INPUT_NAME, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary_data)
    return infer_input


def requested_outputs(names, binary_data=True):
    """InferRequestedOutputs for ``names``; None (let the server choose) if names is None."""
    if names is None:
        return None
    return [httpclient.InferRequestedOutput(name, binary_data=binary_data) for name in names]


def output_names(result):
    """Names of the outputs in an InferResult, in response order."""
    return [output["name"] for output in result.get_response()["outputs"]]


def mismatches(actual, expected, rtol, atol):
    """Indices of elements that are neither within ``atol`` absolutely nor
    within ``rtol`` relatively of ``expected`` (NaN never matches)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    diff = np.abs(actual - expected)
    ok = (diff <= atol) | (diff <= rtol * np.abs(expected))
    return np.argwhere(~ok)


class InferdTestCase(unittest.TestCase):
    """Base class: one client per test class, and assertion helpers."""

    @classmethod
    def setUpClass(cls):
        cls.client = httpclient.InferenceServerClient(url=server_url())

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def infer(self, model, rows, datatype="FP64", binary_inputs=True,
              outputs=None, binary_outputs=True):
        return self.client.infer(
            model,
            [make_input(rows, datatype, binary_inputs)],
            outputs=requested_outputs(outputs, binary_outputs),
        )

    def assert_output_close(self, model, name, actual, expected, rtol, atol):
        self.assertEqual(actual.shape, expected.shape, f"{model}/{name}: shape")
        bad = mismatches(actual, expected, rtol, atol)
        if len(bad):
            index = tuple(int(i) for i in bad[0])
            self.fail(
                f"{model}/{name}: {len(bad)} of {expected.size} elements differ "
                f"(rtol={rtol}, atol={atol}); first at {list(index)}: "
                f"got {actual[index].item()!r}, expected {expected[index].item()!r}"
            )

    def assert_outputs_match_golden(self, model, result, names, rows, float_datatype,
                                    rtol, atol):
        """Check outputs ``names`` of ``result`` against golden rows ``rows``
        (a slice or index array): datatype, shape and values."""
        golden = load_golden(model)
        for name in names:
            with self.subTest(output=name):
                tensor = result.get_output(name)
                self.assertIsNotNone(tensor, f"{model}: output {name!r} missing")
                actual = result.as_numpy(name)
                expected = golden["outputs"][name][rows]
                if name in EXACT_OUTPUTS:
                    self.assertEqual(tensor["datatype"], LABEL_DATATYPE)
                    self.assertEqual(actual.shape, expected.shape, f"{model}/{name}: shape")
                    np.testing.assert_array_equal(actual, expected, err_msg=f"{model}/{name}")
                else:
                    self.assertEqual(tensor["datatype"], float_datatype, f"{model}/{name}")
                    self.assertEqual(actual.dtype, NUMPY_DTYPES[float_datatype])
                    self.assert_output_close(model, name, actual, expected, rtol, atol)


class HealthAndMetadataTest(InferdTestCase):
    def test_server_live(self):
        self.assertTrue(self.client.is_server_live())

    def test_server_ready(self):
        self.assertTrue(self.client.is_server_ready())

    def test_models_ready(self):
        for model in MODELS:
            with self.subTest(model=model):
                self.assertTrue(self.client.is_model_ready(model))

    def test_server_metadata(self):
        metadata = self.client.get_server_metadata()
        self.assertEqual(metadata["name"], "inferd")
        self.assertIsInstance(metadata["version"], str)
        self.assertTrue(metadata["version"])

    def test_model_metadata(self):
        for model, spec in MODELS.items():
            with self.subTest(model=model):
                metadata = self.client.get_model_metadata(model)
                self.assertEqual(metadata["name"], model)
                self.assertEqual(metadata["versions"], ["1"])
                self.assertEqual(metadata["platform"], spec["platform"])
                self.assertEqual(
                    metadata["inputs"],
                    [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, spec["features"]]}],
                )
                outputs = {output["name"]: output for output in metadata["outputs"]}
                self.assertEqual(sorted(outputs), sorted(spec["outputs"]))
                for name, shape in spec["outputs"].items():
                    self.assertEqual(outputs[name]["shape"], shape, f"{model}/{name}")
                    if name in EXACT_OUTPUTS:
                        self.assertEqual(outputs[name]["datatype"], LABEL_DATATYPE)
                    else:
                        self.assertIn(outputs[name]["datatype"], ("FP64", "FP32"))


class GoldenInferenceTest(InferdTestCase):
    """All golden rows of every model, every output requested explicitly."""

    def check_all_rows(self, datatype, binary_inputs, binary_outputs, rtol, atol):
        for model, spec in MODELS.items():
            if datatype == "FP32" and spec["platform"] == "inferd_lightgbm":
                # LightGBM compares float64 features with float64 thresholds: features
                # rounded to float32 on the client may fall on the other side of a split,
                # so FP32 inputs are only comparable to the golden for the other models.
                continue
            with self.subTest(model=model):
                golden = load_golden(model)
                names = list(spec["outputs"])
                result = self.infer(model, golden["inputs"], datatype, binary_inputs,
                                    names, binary_outputs)
                self.assertEqual(sorted(output_names(result)), sorted(names))
                self.assert_outputs_match_golden(model, result, names, slice(None),
                                                 datatype, rtol, atol)

    def test_fp64_binary(self):
        self.check_all_rows("FP64", True, True, FP64_RTOL, FP64_ATOL)

    def test_fp64_json(self):
        self.check_all_rows("FP64", False, False, FP64_RTOL, FP64_ATOL)

    def test_fp64_binary_inputs_json_outputs(self):
        self.check_all_rows("FP64", True, False, FP64_RTOL, FP64_ATOL)

    def test_fp64_json_inputs_binary_outputs(self):
        self.check_all_rows("FP64", False, True, FP64_RTOL, FP64_ATOL)

    def test_fp32_binary(self):
        self.check_all_rows("FP32", True, True, FP32_RTOL, FP32_ATOL)

    def test_fp32_json(self):
        self.check_all_rows("FP32", False, False, FP32_RTOL, FP32_ATOL)

    def test_single_row(self):
        for model, spec in MODELS.items():
            with self.subTest(model=model):
                golden = load_golden(model)
                names = list(spec["outputs"])
                result = self.infer(model, golden["inputs"][:1], outputs=names)
                self.assert_outputs_match_golden(model, result, names, slice(0, 1),
                                                 "FP64", FP64_RTOL, FP64_ATOL)

    def test_integer_input(self):
        # Integer inputs are accepted; their outputs must match the same
        # (integer-valued) rows sent as FP64. The float datatype of the outputs
        # is not specified for integer inputs, hence the float32 tolerance.
        model = "iris-logistic"
        rows = np.rint(load_golden(model)["inputs"])
        names = list(MODELS[model]["outputs"])
        expected = self.infer(model, rows, "FP64", outputs=names)
        actual = self.infer(model, rows.astype(np.int64), "INT64", outputs=names)
        for name in names:
            with self.subTest(output=name):
                want, got = expected.as_numpy(name), actual.as_numpy(name)
                if name in EXACT_OUTPUTS:
                    np.testing.assert_array_equal(got, want)
                else:
                    self.assert_output_close(model, name, got, want, FP32_RTOL, FP32_ATOL)


class OutputSelectionTest(InferdTestCase):
    def test_default_outputs(self):
        for model, spec in MODELS.items():
            for binary_inputs in (True, False):
                with self.subTest(model=model, binary_inputs=binary_inputs):
                    golden = load_golden(model)
                    result = self.infer(model, golden["inputs"], binary_inputs=binary_inputs,
                                        outputs=None)
                    names = spec["default_outputs"]
                    self.assertEqual(sorted(output_names(result)), sorted(names))
                    self.assert_outputs_match_golden(model, result, names, slice(None),
                                                     "FP64", FP64_RTOL, FP64_ATOL)

    def test_only_label(self):
        for model in CLASSIFIERS:
            for binary_outputs in (True, False):
                with self.subTest(model=model, binary_outputs=binary_outputs):
                    golden = load_golden(model)
                    result = self.infer(model, golden["inputs"], outputs=["label"],
                                        binary_outputs=binary_outputs)
                    self.assertEqual(output_names(result), ["label"])
                    self.assert_outputs_match_golden(model, result, ["label"], slice(None),
                                                     "FP64", FP64_RTOL, FP64_ATOL)


class ErrorTest(InferdTestCase):
    UNKNOWN_MODEL = "no-such-model"

    def assert_unknown_model_error(self, error):
        self.assertEqual(error.status(), "404", str(error))
        self.assertIn(self.UNKNOWN_MODEL, error.message())

    def test_infer_unknown_model(self):
        rows = load_golden("iris-logistic")["inputs"]
        with self.assertRaises(httpclient.InferenceServerException) as caught:
            self.infer(self.UNKNOWN_MODEL, rows)
        self.assert_unknown_model_error(caught.exception)

    def test_metadata_unknown_model(self):
        with self.assertRaises(httpclient.InferenceServerException) as caught:
            self.client.get_model_metadata(self.UNKNOWN_MODEL)
        self.assert_unknown_model_error(caught.exception)

    def test_unknown_model_not_ready(self):
        self.assertFalse(self.client.is_model_ready(self.UNKNOWN_MODEL))

    def test_wrong_feature_count(self):
        # 5 rows of 29 features for a 30-feature model: the message must name
        # the expected count (5 and 29 cannot be mistaken for 30).
        model = "breast-cancer-logistic"
        rows = load_golden(model)["inputs"][:5, :29]
        for binary_inputs in (True, False):
            with self.subTest(binary_inputs=binary_inputs):
                with self.assertRaises(httpclient.InferenceServerException) as caught:
                    self.infer(model, rows, binary_inputs=binary_inputs)
                error = caught.exception
                self.assertEqual(error.status(), "400", str(error))
                self.assertIn("30", error.message())


if __name__ == "__main__":
    unittest.main()
