"""End-to-end tests of inferd's OpenAI-compatible API with the official
``openai`` Python client.

The tests talk to an inferd server that is already running with the bundled
default models; its address comes from the environment as ``host:port``:

    INFERD_URL=127.0.0.1:8080 python -m unittest discover -s tests/python -v

Expected embeddings are sentence-transformers' own, from
``tests/golden/all-minilm-l6-v2.json`` (see ``models/reference/make_embeddings.py``).
"""

import base64
import json
import os
import unittest

import numpy as np
import openai

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "all-minilm-l6-v2.json")
MODEL = "all-minilm-l6-v2"
MIN_COSINE = 0.9999


def cosine(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class OpenAIEmbeddingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = openai.OpenAI(base_url=f"http://{os.environ['INFERD_URL']}/v1", api_key="unused", max_retries=0)
        with open(GOLDEN, encoding="utf-8") as f:
            cls.golden = json.load(f)

    def test_a_string_as_floats(self):
        case = self.golden["cases"][0]
        result = self.client.embeddings.create(model=MODEL, input=case["text"], encoding_format="float")
        self.assertEqual(result.model, MODEL)
        self.assertEqual(len(result.data), 1)
        self.assertEqual(len(result.data[0].embedding), 384)
        self.assertGreaterEqual(cosine(result.data[0].embedding, case["embedding"]), MIN_COSINE)
        self.assertEqual(result.usage.prompt_tokens, len(case["token_ids"]))
        self.assertEqual(result.usage.total_tokens, len(case["token_ids"]))

    def test_a_list_as_base64(self):
        cases = self.golden["cases"][:10]
        # The client asks for base64 itself when no format is given, and decodes it.
        for encoding in ("base64", None):
            kwargs = {} if encoding is None else {"encoding_format": encoding}
            result = self.client.embeddings.create(model=MODEL, input=[c["text"] for c in cases], **kwargs)
            self.assertEqual([d.index for d in result.data], list(range(len(cases))))
            for item, case in zip(result.data, cases):
                embedding = item.embedding
                if isinstance(embedding, str):  # the client decodes only when it chose base64 itself
                    embedding = np.frombuffer(base64.b64decode(embedding), dtype="<f4")
                self.assertGreaterEqual(cosine(embedding, case["embedding"]), MIN_COSINE, case["name"])
            self.assertEqual(result.usage.prompt_tokens, sum(len(c["token_ids"]) for c in cases))

    def test_a_list_as_floats_with_fewer_dimensions(self):
        cases = self.golden["cases"][:3]
        result = self.client.embeddings.create(
            model=MODEL, input=[c["text"] for c in cases], encoding_format="float", dimensions=64
        )
        for item in result.data:
            self.assertEqual(len(item.embedding), 64)
            self.assertAlmostEqual(float(np.linalg.norm(item.embedding)), 1.0, places=4)

    def test_errors_raise_the_clients_exceptions(self):
        with self.assertRaises(openai.BadRequestError) as raised:
            self.client.embeddings.create(model=MODEL, input=[], encoding_format="float")
        self.assertIn("empty", raised.exception.message)
        with self.assertRaises(openai.NotFoundError):
            self.client.embeddings.create(model="no-such-model", input="hi", encoding_format="float")

    def test_models_are_listed(self):
        ids = [model.id for model in self.client.models.list()]
        self.assertIn(MODEL, ids)
        self.assertEqual(self.client.models.retrieve(MODEL).id, MODEL)


if __name__ == "__main__":
    unittest.main()
