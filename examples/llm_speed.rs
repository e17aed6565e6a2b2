//! Measures the generation engine directly, without HTTP: prefill speed of a ~256-token prompt,
//! single-stream decode speed, and aggregate decode speed with several sequences in the batch.
//!
//! ```text
//! cargo run --release --example llm_speed -- [MODEL.gguf] [--threads N] [--streams 1,4,8,16] [--tokens 128]
//! ```

use std::time::Instant;

use inferd_core::{CausalLm, SequenceStep, TextCodec};
use inferd_transformers::generation::LlamaCache;
use inferd_transformers::{GenerationOptions, ModelSource, load_generation};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model = "models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf".to_string();
    let mut threads = None;
    let mut streams = vec![1, 4, 8, 16];
    let mut tokens = 128usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--threads" => threads = Some(args.next().unwrap_or_default().parse()?),
            "--streams" => {
                streams = args.next().unwrap_or_default().split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--tokens" => tokens = args.next().unwrap_or_default().parse()?,
            other => model = other.to_string(),
        }
    }
    let options = GenerationOptions { threads, ..GenerationOptions::default() };
    let mut loaded = load_generation(&ModelSource::Folder(model.into()), &inferd_core::Device::Cpu, &options)?;
    println!("engine: {}", loaded.engine);

    // A ~256-token prompt.
    let text = "The quick brown fox jumps over the lazy dog while the farmer counts his sheep. ".repeat(16);
    let mut prompt = loaded.codec.encode(&text, true)?;
    prompt.truncate(256);
    for round in 0..3 {
        let mut cache = loaded.model.new_cache();
        let started = Instant::now();
        loaded.model.forward(&mut [SequenceStep { cache: &mut cache, tokens: &prompt }])?;
        let seconds = started.elapsed().as_secs_f64();
        if round > 0 {
            println!("prefill {} tokens: {:.1} tokens/s", prompt.len(), prompt.len() as f64 / seconds);
        }
    }

    let short = loaded.codec.encode("Once upon a time", true)?;
    for &count in &streams {
        let mut caches: Vec<LlamaCache> = (0..count).map(|_| loaded.model.new_cache()).collect();
        let mut feeds: Vec<Vec<u32>> = vec![short.clone(); count];
        let mut started = Instant::now();
        for step in 0..=tokens {
            if step == 1 {
                started = Instant::now();
            }
            let mut batch: Vec<SequenceStep<'_, LlamaCache>> =
                caches.iter_mut().zip(&feeds).map(|(cache, tokens)| SequenceStep { cache, tokens }).collect();
            let logits = loaded.model.forward(&mut batch)?;
            for (feed, logits) in feeds.iter_mut().zip(&logits) {
                *feed = vec![inferd_core::generation::sampling::argmax(logits)];
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "decode, {count} streams: {:.1} tokens/s aggregate ({:.1} per stream)",
            (count * tokens) as f64 / seconds,
            tokens as f64 / seconds
        );
    }
    Ok(())
}
