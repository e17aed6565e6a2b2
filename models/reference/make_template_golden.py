#!/usr/bin/env python3
"""Write tests/golden/chat-templates.json: real models' chat templates rendered by Jinja2.

llama.cpp keeps the chat templates of many models (`models/templates/*.jinja` in its tree,
vendored in llama-cpp-python's source archive, which `models/fetch-models.sh` unpacks into
`models/llama-cpp-models/`). This renders each with Jinja2 the way Hugging Face transformers'
`apply_chat_template` does (hf_chat_template.py, which make_chat_golden.py uses too), for a few
conversations, with `add_generation_prompt` and the variables inferd passes (`messages`, `bos_token`,
`eos_token`), and records each rendered prompt, or that the template refused the conversation.
`crates/inferd-transformers/tests/golden_chat_templates.rs` holds inferd's renderer to it.

Templates that call `strftime_now` render today's date, so they are recorded as skipped.

    python3 models/reference/make_template_golden.py    # Jinja2 as requirements-llm.txt pins it
"""
import hashlib
import json
import os
import sys

import jinja2

import hf_chat_template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = os.path.join(ROOT, "models", "llama-cpp-models", "templates")
OUT = os.path.join(ROOT, "tests", "golden", "chat-templates.json")
BOS, EOS = "<s>", "</s>"

CONVERSATIONS = {
    "system_and_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "three_turns": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about cats."},
    ],
    "one_turn_quotes_and_unicode": [
        {"role": "user", "content": "Say \"ok\" in <b>bold</b> & café ☕\nthen stop."},
    ],
}


def main():
    if not os.path.isdir(TEMPLATES):
        sys.exit(f"{TEMPLATES} is missing: run models/fetch-models.sh")
    env = hf_chat_template.environment()
    templates = {}
    for name in sorted(os.listdir(TEMPLATES)):
        if not name.endswith(".jinja"):
            continue
        with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
            source = f.read()
        entry = {"sha256": hashlib.sha256(source.encode("utf-8")).hexdigest()}
        if "strftime_now" in source:
            entry["skipped"] = "renders today's date (strftime_now)"
            templates[name] = entry
            continue
        try:
            template = env.from_string(source)
        except jinja2.exceptions.TemplateError as err:
            entry["skipped"] = f"Jinja2 cannot compile it: {err}"
            templates[name] = entry
            continue
        rendered = {}
        for key, messages in CONVERSATIONS.items():
            try:
                rendered[key] = {"prompt": template.render(messages=messages, add_generation_prompt=True,
                                                           bos_token=BOS, eos_token=EOS)}
            except Exception as err:  # the template refused the conversation
                rendered[key] = {"refused": f"{type(err).__name__}: {err}"}
        entry["renders"] = rendered
        templates[name] = entry
    golden = {
        "about": "Chat templates of models/llama-cpp-models/templates rendered by Jinja2 as transformers' "
                 "apply_chat_template does; written by models/reference/make_template_golden.py",
        "versions": {"jinja2": jinja2.__version__, "python": sys.version.split()[0]},
        "bos_token": BOS,
        "eos_token": EOS,
        "conversations": CONVERSATIONS,
        "templates": templates,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    rendered = sum(1 for t in templates.values() if "renders" in t)
    print(f"{OUT}: {len(templates)} templates, {rendered} rendered")


if __name__ == "__main__":
    main()
