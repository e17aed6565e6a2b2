//! Golden test: real models' chat templates rendered as Hugging Face renders them.
//!
//! `tests/golden/chat-templates.json` (written by `models/reference/make_template_golden.py`)
//! holds the templates llama.cpp collects from models (`models/templates/*.jinja`, unpacked by
//! `models/fetch-models.sh` from llama-cpp-python's source archive) rendered by Jinja2 as
//! transformers' `apply_chat_template` renders them, for three conversations, or the fact that
//! a template refused one. inferd's renderer must give the same prompt, character for
//! character, or refuse too. Templates the golden file skips (those that print today's date)
//! are not rendered.

use std::collections::BTreeMap;
use std::path::Path;

use inferd_core::ChatMessage;
use inferd_transformers::generation::chat_template::ChatTemplate;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    bos_token: String,
    eos_token: String,
    conversations: BTreeMap<String, Vec<Message>>,
    templates: BTreeMap<String, Template>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Deserialize)]
struct Template {
    sha256: String,
    skipped: Option<String>,
    renders: Option<BTreeMap<String, Render>>,
}

#[derive(Deserialize)]
struct Render {
    prompt: Option<String>,
    refused: Option<String>,
}

fn golden() -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/chat-templates.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("golden JSON")
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_template_renders_as_jinja2_does() {
    let golden = golden();
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/llama-cpp-models/templates");
    assert!(folder.is_dir(), "{} is missing: run models/fetch-models.sh", folder.display());
    let mut differences = Vec::new();
    let mut compared = 0;
    for (name, template) in &golden.templates {
        let source = std::fs::read_to_string(folder.join(name)).expect("template file");
        assert_eq!(sha256(&source), template.sha256, "{name} is not the file the golden file was made from");
        let Some(renders) = &template.renders else {
            assert!(template.skipped.is_some(), "{name}: neither rendered nor skipped");
            continue;
        };
        let compiled = match ChatTemplate::new(source, golden.bos_token.clone(), golden.eos_token.clone()) {
            Ok(compiled) => compiled,
            Err(err) => {
                differences.push(format!("{name}: does not compile: {err}"));
                continue;
            }
        };
        for (key, expected) in renders {
            let messages: Vec<ChatMessage> = golden.conversations[key]
                .iter()
                .map(|m| ChatMessage { role: m.role.clone(), content: m.content.clone() })
                .collect();
            compared += 1;
            match (compiled.render(&messages), &expected.prompt) {
                (Ok(prompt), Some(want)) if &prompt == want => {}
                (Ok(prompt), Some(want)) => {
                    let at = prompt.chars().zip(want.chars()).take_while(|(a, b)| a == b).count();
                    let context = |s: &str| s.chars().skip(at.saturating_sub(20)).take(60).collect::<String>();
                    differences.push(format!(
                        "{name} / {key}: differs at character {at}: ours {:?}, Jinja2's {:?}",
                        context(&prompt),
                        context(want)
                    ));
                }
                (Ok(_), None) => differences.push(format!(
                    "{name} / {key}: rendered, but Jinja2 refused: {}",
                    expected.refused.as_deref().unwrap_or("?")
                )),
                (Err(_), None) => {}
                (Err(err), Some(_)) => differences.push(format!("{name} / {key}: refused: {err}")),
            }
        }
    }
    assert!(compared >= 150, "only {compared} renders compared");
    assert!(differences.is_empty(), "{} of {compared} renders differ:\n{}", differences.len(), differences.join("\n"));
}
