"""/metrics read by the Prometheus project's own parser (``prometheus_client``),
with the histograms checked to move as requests are served.

    INFERD_URL=127.0.0.1:8080 python -m unittest discover -s tests/python -v
"""

import json
import os
import unittest
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

URL = os.environ.get("INFERD_URL", "127.0.0.1:8080")
MODEL = "all-minilm-l6-v2"


def scrape():
    with urllib.request.urlopen(f"http://{URL}/metrics") as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode("utf-8")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    return content_type, families


def sample(families, family, name, **labels):
    """The value of one sample, 0 when the series does not exist yet."""
    for s in families[family].samples if family in families else []:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def embed(texts):
    body = json.dumps({"model": MODEL, "input": texts}).encode()
    request = urllib.request.Request(
        f"http://{URL}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


class MetricsTest(unittest.TestCase):
    def test_every_family_parses_with_its_declared_type(self):
        # Labelled families appear once a series exists: serve one request first.
        embed(["a request so that every stage has been seen"])
        content_type, families = scrape()
        self.assertTrue(content_type.startswith("text/plain; version=0.0.4"), content_type)
        expected = {
            "inferd_requests": "counter",
            "inferd_request_duration_seconds": "histogram",
            "inferd_request_stage_duration_seconds": "histogram",
            "inferd_queue_duration_seconds": "histogram",
            "inferd_compute_duration_seconds": "histogram",
            "inferd_batch_size": "histogram",
            "inferd_queue_depth": "gauge",
            "inferd_running_sequences": "gauge",
            "inferd_requests_in_flight": "gauge",
            "inferd_model_ready": "gauge",
            "process_cpu_seconds": "counter",
            "process_resident_memory_bytes": "gauge",
        }
        for name, kind in expected.items():
            self.assertIn(name, families, f"{name} missing")
            self.assertEqual(families[name].type, kind, name)

    def test_histograms_and_counters_move_with_requests(self):
        embed(["warm the series up"])
        _, before = scrape()
        labels = {"model": MODEL, "endpoint": "/v1/embeddings", "status": "200"}
        result = embed(["one", "two three", "four five six"])
        tokens = result["usage"]["prompt_tokens"]
        _, after = scrape()

        def moved(family, name, **labels):
            return sample(after, family, name, **labels) - sample(before, family, name, **labels)

        self.assertEqual(moved("inferd_request_duration_seconds", "inferd_request_duration_seconds_count", **labels), 1)
        self.assertGreater(moved("inferd_request_duration_seconds", "inferd_request_duration_seconds_sum", **labels), 0)
        self.assertEqual(
            moved("inferd_request_duration_seconds", "inferd_request_duration_seconds_bucket", le="+Inf", **labels), 1
        )
        for stage in ("parse", "tokenize", "queue", "compute", "serialize"):
            self.assertEqual(
                moved(
                    "inferd_request_stage_duration_seconds",
                    "inferd_request_stage_duration_seconds_count",
                    model=MODEL,
                    stage=stage,
                ),
                1,
                stage,
            )
        self.assertEqual(moved("inferd_tokens", "inferd_tokens_total", model=MODEL, kind="prompt"), tokens)
        self.assertGreaterEqual(moved("inferd_batch_size", "inferd_batch_size_count", model=MODEL), 1)
        self.assertGreater(sample(after, "inferd_requests_per_minute", "inferd_requests_per_minute", model=MODEL), 0)
        p99 = sample(after, "inferd_request_latency_window_seconds", "inferd_request_latency_window_seconds", model=MODEL, quantile="0.99")
        self.assertGreater(p99, 0)


if __name__ == "__main__":
    unittest.main()
