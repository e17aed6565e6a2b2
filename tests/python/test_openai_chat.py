"""End-to-end tests of inferd's chat and text completions with the official
``openai`` Python client, against a running inferd server with the bundled
default models (SmolLM2-135M-Instruct among them):

    INFERD_URL=127.0.0.1:8080 python -m unittest tests/python/test_openai_chat.py -v

The prompt token counts come from ``tests/golden/smollm2-chat.json`` (llama.cpp's
own tokenization of the chat template's rendering).
"""

import json
import os
import unittest

import openai

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "golden", "smollm2-chat.json")
MODEL = "smollm2-135m-instruct"


class OpenAIChatTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = openai.OpenAI(base_url=f"http://{os.environ['INFERD_URL']}/v1", api_key="unused", max_retries=0)
        with open(GOLDEN, encoding="utf-8") as f:
            cls.golden = json.load(f)

    def case(self, name):
        return next(case for case in self.golden["cases"] if case["name"] == name)

    def test_chat_completion(self):
        case = self.case("plain-question")
        result = self.client.chat.completions.create(
            model=MODEL, messages=case["messages"], max_tokens=12, temperature=0
        )
        self.assertEqual(result.object, "chat.completion")
        self.assertEqual(result.model, MODEL)
        choice = result.choices[0]
        self.assertEqual(choice.message.role, "assistant")
        self.assertTrue(choice.message.content)
        self.assertIn(choice.finish_reason, ("stop", "length"))
        self.assertEqual(result.usage.prompt_tokens, len(case["prompt_ids"]))
        self.assertLessEqual(result.usage.completion_tokens, 12)
        self.assertEqual(result.usage.total_tokens, result.usage.prompt_tokens + result.usage.completion_tokens)

    def test_streamed_chat_completion_with_usage(self):
        case = self.case("system-and-user")
        kwargs = dict(model=MODEL, messages=case["messages"], max_tokens=12, temperature=0)
        plain = self.client.chat.completions.create(**kwargs)
        stream = self.client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        text, finish, usage, chunks = "", None, None, 0
        for chunk in stream:
            chunks += 1
            self.assertEqual(chunk.object, "chat.completion.chunk")
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
        self.assertGreater(chunks, 3)
        self.assertEqual(text, plain.choices[0].message.content)
        self.assertEqual(finish, plain.choices[0].finish_reason)
        self.assertEqual(usage.prompt_tokens, len(case["prompt_ids"]))
        self.assertEqual(usage.completion_tokens, plain.usage.completion_tokens)

    def test_logprobs(self):
        result = self.client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            temperature=0,
            logprobs=True,
            top_logprobs=4,
        )
        content = result.choices[0].logprobs.content
        self.assertEqual(len(content), result.usage.completion_tokens)
        for entry in content:
            self.assertEqual(len(entry.top_logprobs), 4)
            self.assertEqual(entry.top_logprobs[0].token, entry.token)
            self.assertLessEqual(entry.logprob, 0.0)

    def test_text_completion_streamed(self):
        stream = self.client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
        plain = self.client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0)
        self.assertEqual(text, plain.choices[0].text)
        self.assertEqual(plain.usage.completion_tokens, 8)

    def test_bad_requests_raise_bad_request_error(self):
        for kwargs in (
            dict(messages=[], max_tokens=2),
            dict(messages=[{"role": "user", "content": "hi"}], temperature=5),
            dict(messages=[{"role": "user", "content": "hi"}], max_tokens=100000),
        ):
            with self.assertRaises(openai.BadRequestError) as raised:
                self.client.chat.completions.create(model=MODEL, **kwargs)
            self.assertEqual(raised.exception.status_code, 400)


if __name__ == "__main__":
    unittest.main()
