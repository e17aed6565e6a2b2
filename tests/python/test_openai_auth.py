"""The official ``openai`` client against an inferd server with API keys and
quotas (started by tests/run.sh with a keys file): the key is sent as the
client sends it, a wrong key raises AuthenticationError, and a spent
requests-per-minute quota raises RateLimitError with Retry-After.

    INFERD_AUTH_URL=127.0.0.1:8081 INFERD_TEST_KEY=... INFERD_LIMITED_KEY=... \\
        python -m unittest discover -s tests/python -v
"""

import os
import unittest

import openai

URL = os.environ.get("INFERD_AUTH_URL")
MODEL = "all-minilm-l6-v2"


@unittest.skipUnless(URL, "INFERD_AUTH_URL is not set: no server with keys to test against")
class OpenAIAuthTest(unittest.TestCase):
    def client(self, key):
        return openai.OpenAI(base_url=f"http://{URL}/v1", api_key=key, max_retries=0)

    def test_a_valid_key_is_served_with_rate_limit_headers(self):
        # About 40 tokens, which the 600-a-minute bucket takes 4 s to refill.
        text = " ".join(["word"] * 38)
        raw = self.client(os.environ["INFERD_TEST_KEY"]).embeddings.with_raw_response.create(model=MODEL, input=text)
        self.assertEqual(raw.http_response.status_code, 200)
        used = raw.parse().usage.prompt_tokens
        self.assertEqual(used, 40)
        self.assertEqual(raw.headers["x-ratelimit-limit-tokens"], "600")
        remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
        self.assertTrue(600 - used <= remaining < 600, remaining)
        self.assertEqual(len(raw.parse().data[0].embedding), 384)

    def test_a_wrong_key_raises_authentication_error(self):
        with self.assertRaises(openai.AuthenticationError) as raised:
            self.client("not-a-key").embeddings.create(model=MODEL, input="hello")
        self.assertEqual(raised.exception.status_code, 401)
        self.assertIn("invalid API key", str(raised.exception))

    def test_a_spent_quota_raises_rate_limit_error(self):
        client = self.client(os.environ["INFERD_LIMITED_KEY"])
        # The limited key allows 2 requests a minute.
        client.embeddings.create(model=MODEL, input="one")
        client.embeddings.create(model=MODEL, input="two")
        with self.assertRaises(openai.RateLimitError) as raised:
            client.embeddings.create(model=MODEL, input="three")
        response = raised.exception.response
        self.assertEqual(response.status_code, 429)
        self.assertTrue(1 <= int(response.headers["retry-after"]) <= 30)
        self.assertEqual(response.headers["x-ratelimit-remaining-requests"], "0")


if __name__ == "__main__":
    unittest.main()
