"""Chat templates rendered as Hugging Face transformers' `apply_chat_template` renders them
(transformers/utils/chat_template_utils.py): Jinja2's ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and the loopcontrols extension, transformers' `{% generation %}`
tag, a `tojson` filter over json.dumps (ensure_ascii=False), and the globals
`raise_exception` and `strftime_now`. Shared by make_chat_golden.py and
make_template_golden.py; needs only Jinja2.
"""
import json
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}`: marks the assistant's part of
    the prompt (for training masks) and renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def environment():
    """A Jinja2 environment configured as transformers configures it."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(template, messages, bos_token, eos_token):
    """`template` rendered for `messages`, with the generation prompt, as inferd renders it."""
    return environment().from_string(template).render(messages=messages, add_generation_prompt=True,
                                                      bos_token=bos_token, eos_token=eos_token)
