//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template` in GGUF,
//! `chat_template` in `tokenizer_config.json`) rendered as Hugging Face's `apply_chat_template`
//! renders it: Jinja2 with `trim_blocks` and `lstrip_blocks`, the variables `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`, the functions `raise_exception` and
//! `strftime_now`, Python's string and dict methods, a `tojson` that writes as Python's
//! `json.dumps` does (keys sorted), and transformers' `{% generation %}` tag.

use inferd_core::{ChatMessage, InferError};
use minijinja::{Environment, Error, ErrorKind, Value, context};

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; an error says what the template engine cannot parse.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|err| format!("template syntax: {err}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, generation_tags_as_plain_blocks(&source))
            .map_err(|err| format!("the chat template does not compile: {err:#}"))?;
        Ok(Self { env, bos_token, eos_token })
    }

    /// The prompt for `messages`, ending with the opening of the assistant's turn.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, InferError> {
        let template = self.env.get_template(NAME).map_err(|err| InferError::Internal(err.to_string()))?;
        let messages: Vec<Value> =
            messages.iter().map(|m| context! { role => m.role.clone(), content => m.content.clone() }).collect();
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.clone(),
                eos_token => self.eos_token.clone(),
            })
            .map_err(|err| match err.kind() {
                // The template refused the conversation (e.g. roles that do not alternate).
                ErrorKind::InvalidOperation => InferError::InvalidInput(format!(
                    "the model's chat template refused the messages: {}",
                    err.detail().unwrap_or("no reason given")
                )),
                _ => InferError::InvalidInput(format!("the model's chat template cannot render these messages: {err}")),
            })
    }
}

/// `tojson` close to Python's `json.dumps(value, ensure_ascii=False)`: `", "` and `": "`
/// separators, or an indent when given, non-ASCII characters as they are. Object keys come out
/// sorted (Python keeps insertion order).
/// `source` with transformers' `{% generation %}…{% endgeneration %}` (which marks the
/// assistant's tokens for training masks and renders its body unchanged) as `{% if true %}…
/// {% endif %}`: the same output, whitespace control included, in a tag minijinja knows.
fn generation_tags_as_plain_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else { break };
        let inner = &tag[2..end];
        let body = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']);
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(word) => {
                let keyword = inner.find(body.trim()).unwrap_or(0);
                out.push_str("{%");
                out.push_str(&inner[..keyword]);
                out.push_str(word);
                out.push_str(&inner[keyword + body.trim().len()..]);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

fn tojson(value: Value, indent: Option<usize>) -> Result<Value, Error> {
    let json = serde_json::to_value(&value).map_err(|err| Error::new(ErrorKind::InvalidOperation, err.to_string()))?;
    let mut out = String::new();
    write_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_json(value: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as Json;
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The current UTC time formatted with the common `strftime` fields (`%Y %m %d %H %M %S %b %B
/// %A %a %%`); others are kept as written.
fn strftime_now(format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = inferd_core::calendar::civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('H') => out.push_str(&format!("{:02}", time / 3600)),
            Some('M') => out.push_str(&format!("{:02}", time / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", time % 60)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }

    #[test]
    fn renders_with_trimmed_blocks_python_methods_and_exceptions() {
        let source = "{{ bos_token }}{% for m in messages %}\n  {% if m.role not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m.role) }}{% endif %}\n<{{ m.role }}>{{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let template = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).unwrap();
        let text = template.render(&[message("user", "  hi  "), message("assistant", "yo")]).unwrap();
        assert_eq!(text, "<s><user>hi\n<assistant>yo\n<assistant>");
        let err = template.render(&[message("tool", "x")]).unwrap_err().to_string();
        assert!(err.contains("bad role tool"), "{err}");
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }

    #[test]
    fn generation_tags_render_their_body() {
        let source = "a\n{%- generation -%}\n  b {{ 1 + 1 }}\n{%- endgeneration %}\nc{% if x %}{% endif %}{{ '%}' }}";
        assert_eq!(
            generation_tags_as_plain_blocks(source),
            "a\n{%- if true -%}\n  b {{ 1 + 1 }}\n{%- endif %}\nc{% if x %}{% endif %}{{ '%}' }}"
        );
        let template = ChatTemplate::new(source.into(), String::new(), String::new()).unwrap();
        // As Jinja2 renders it (trim_blocks drops the line break after the closing tag).
        assert_eq!(template.render(&[]).unwrap(), "ab 2c%}");
    }

    #[test]
    fn tojson_writes_like_python() {
        let template =
            ChatTemplate::new("{{ {'a': [1, 'é'], 'b': none} | tojson }}".into(), String::new(), String::new())
                .unwrap();
        assert_eq!(template.render(&[]).unwrap(), r#"{"a": [1, "é"], "b": null}"#);
        assert_eq!(strftime_now("%%").len(), 1);
        assert_eq!(strftime_now("%Y").len(), 4);
    }
}
